"""Streaming sources: every format and compression, chunked large files, bad files and skip mode."""

import bz2
import gzip
import json

import pytest

from kerasllm.data import sources
from kerasllm.data.sources import SourceStats, iter_pieces
from kerasllm.errors import DataError

ROWS = ["first row, with a comma", 'a "quoted" one', "第三行"]


def write_formats(folder):
    """The same three documents in each row format (and one text file)."""
    (folder / "a.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(ROWS)))
    (folder / "b.csv").write_text("id,text\n" + "".join(f'{i},"{t.replace(chr(34), 2 * chr(34))}"\n' for i, t in enumerate(ROWS)))
    (folder / "c.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t1\n" for t in ROWS))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ROWS, "n": [1, 2, 3]}), folder / "d.parquet")
    (folder / "e.txt").write_text("one whole\n\ndocument\n")


def compress(path, suffix):
    raw = path.read_bytes()
    if suffix == ".gz":
        packed = gzip.compress(raw)
    elif suffix == ".bz2":
        packed = bz2.compress(raw)
    else:
        import zstandard

        packed = zstandard.ZstdCompressor().compress(raw)
    target = path.with_name(path.name + suffix)
    target.write_bytes(packed)
    path.unlink()
    return target


@pytest.mark.parametrize("compression", ["", ".gz", ".bz2", ".zst"])
def test_every_format_and_compression(tmp_path, compression):
    write_formats(tmp_path)
    if compression:
        for path in list(tmp_path.iterdir()):
            compress(path, compression)
    stats = SourceStats()
    pieces = list(iter_pieces(tmp_path, stats=stats))
    assert [p.text for p in pieces] == ROWS * 4 + ["one whole\n\ndocument\n"]
    assert all(p.first and p.last for p in pieces)
    assert len(stats.files) == 5 and stats.bytes_done == sum(size for _, size in stats.files)


def test_a_large_text_file_comes_in_line_aligned_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK", 64)
    text = "".join(f"line {i} 红楼梦\n" + ("\n" if i % 7 == 0 else "") for i in range(200))
    (tmp_path / "big.txt").write_bytes(("\ufeff" + text).replace("\n", "\r\n").encode("utf-8"))
    pieces = list(iter_pieces(tmp_path / "big.txt"))
    assert len(pieces) > 20 and "".join(p.text for p in pieces) == text
    assert all(p.text.endswith("\n") for p in pieces)
    assert [p.first for p in pieces] == [True] + [False] * (len(pieces) - 1)
    assert [p.last for p in pieces] == [False] * (len(pieces) - 1) + [True]


def bad_folder(tmp_path):
    (tmp_path / "1.txt").write_text("good text\n")
    (tmp_path / "2.jsonl").write_text('{"text": "fine"}\n{"text": broken}\n{"text": "after"}\n')
    (tmp_path / "3.bin").write_bytes(b"abc\x00\x01\x02")
    (tmp_path / "4.txt").write_bytes("ok ".encode() + b"\xff\xfe bad")
    (tmp_path / "5.csv").write_text("text,label\nrow,1\ntoo,many,fields\n")
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("2.jsonl", r"2.jsonl, line 2: not valid JSON \(Expecting value, column 10\)"),
    ("3.bin", r"3.bin: looks like a binary file \(NUL byte at offset 3\); expected UTF-8 text"),
    ("4.txt", r"4.txt: not valid UTF-8 \(byte offset 3, line 1\); convert it to UTF-8 first"),
    ("5.csv", r"5.csv, line 3: 3 fields, expected 2 like the header \(text, label\)"),
])
def test_bad_files_name_the_file_and_offset(tmp_path, name, message):
    bad_folder(tmp_path)
    with pytest.raises(DataError, match=message):
        list(iter_pieces(tmp_path / name))


def test_skip_mode_skips_and_counts_bad_rows_and_files(tmp_path):
    bad_folder(tmp_path)
    with pytest.raises(DataError, match="not valid JSON"):
        list(iter_pieces(tmp_path))
    stats = SourceStats()
    texts = [p.text for p in iter_pieces(tmp_path, on_error="skip", stats=stats)]
    assert texts == ["good text\n", "fine", "after", "row"]
    assert len(stats.skipped) == 4 and "3.bin: looks like a binary file" in stats.skipped[1]
    with pytest.raises(DataError, match="data.on_error = 'ignore'"):
        list(iter_pieces(tmp_path, on_error="ignore"))


def test_unknown_text_field_lists_the_fields(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "x", "id": 1}\n')
    assert [p.text for p in iter_pieces(tmp_path)] == ["x"]
    with pytest.raises(DataError, match=r"a.jsonl: no field 'txt' \(data.text_field\); the file has: 'body', 'id'"):
        list(iter_pieces(tmp_path, text_field="txt"))


def test_text_ranges_spell_what_the_pieces_spell(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK", 64)  # a line of over 4 blocks is cut inside
    long_line = "红楼梦" * 3000 + "\n"
    text = "".join(f"line {i} 红楼梦\n" + ("\n" if i % 7 == 0 else "") for i in range(300)) + long_line + "end"
    (tmp_path / "big.txt").write_bytes(("\ufeff" + text).replace("\n", "\r\n").encode("utf-8"))
    (tmp_path / "blank.txt").write_text("  \n\n")
    (tmp_path / "rows.jsonl").write_text('{"text": "a row"}\n')
    pieces = list(iter_pieces(tmp_path))
    items = list(sources.iter_items(tmp_path, range_bytes=500))
    assert len(items) > 30 and isinstance(items[0], sources.TextRange) and isinstance(items[-1], sources.Piece)
    ranges = [item for item in items if isinstance(item, sources.TextRange) and item.path.endswith("big.txt")]
    texts = [sources.read_range(r)[0] for r in ranges]
    assert "".join(texts) == text == "".join(p.text for p in pieces if p.text != "a row")
    assert all(t.endswith("\n") or t[-1] in "红楼梦" for t in texts[:-1])  # cut inside the long line only
    assert sum(sources.read_range(r)[1] for r in ranges) == len(text.encode("utf-8"))
    assert [r.first for r in ranges] == [True] + [False] * (len(ranges) - 1) and ranges[-1].last


@pytest.mark.parametrize("name, message", [
    ("3.bin", r"3.bin: looks like a binary file \(NUL byte at offset 3\); expected UTF-8 text"),
    ("4.txt", r"4.txt: not valid UTF-8 \(byte offset 3, line 1\); convert it to UTF-8 first"),
])
def test_a_bad_text_range_is_the_same_error(tmp_path, name, message):
    bad_folder(tmp_path)
    (tmp_path / "6.txt").write_bytes(b"line one\nline two\n\xff\n")
    with pytest.raises(DataError, match=message):
        [sources.read_range(r) for r in sources.iter_items(tmp_path / name, range_bytes=2)]
    with pytest.raises(DataError, match=r"6.txt: not valid UTF-8 \(byte offset 18, line 3\)"):
        [sources.read_range(r) for r in sources.iter_items(tmp_path / "6.txt", range_bytes=4)]
