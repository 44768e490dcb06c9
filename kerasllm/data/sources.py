"""Streaming corpus sources: documents of any number of files, in bounded memory.

`iter_pieces(spec)` yields the text of a corpus as `Piece(text, first, last)` records, in a
fixed order, never holding more than about one block (1 MB) of a file:

| file | documents |
| --- | --- |
| `.txt` (any other suffix) | the whole file; a large one comes in pieces cut at paragraph or line ends |
| `.jsonl` | one per line, from the `data.text_field` field |
| `.csv`, `.tsv` | one per row, from the `data.text_field` column (a header line is required) |
| `.parquet` | one per row, from the `data.text_field` column (pyarrow, extra `[data]`) |

each also compressed as `.gz`, `.bz2` or `.zst` (zstandard, extra `[data]`). `first`/`last`
mark a piece that starts/ends a document, so `<bos>`/`<eos>` go where documents begin and end.
`spec` is what `--data` takes: a registered dataset, a file, a directory (walked in sorted
order, one folder at a time: millions of files cost no list) or a glob.

`iter_items(spec, range_bytes=...)` yields the same corpus with each plain (uncompressed)
text file as `TextRange(path, start, stop, first, last)` byte ranges of about `range_bytes`
cut after a newline instead: a few integers that a worker process reads itself with
`read_range`, so no text travels between processes.

A bad file is a one-line `DataError` naming the file and the offset or line. With
`on_error="skip"` the bad row (`.jsonl`, `.csv`/`.tsv`) or the rest of the bad file is
skipped instead and recorded in `SourceStats.skipped`.
"""

import bz2
import codecs
import collections
import csv
import gzip
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from kerasllm.data.corpus import REGISTERED_DATASETS, resolve_paths
from kerasllm.data.readers import TEXT_NAMES, parse_jsonl_line, pick_column
from kerasllm.errors import DataError

Piece = collections.namedtuple("Piece", "text first last")
TextRange = collections.namedtuple("TextRange", "path start stop first last")

BLOCK = 1 << 20  # bytes of a text file read at a time
COMPRESSIONS = (".gz", ".bz2", ".zst")
ROW_FORMATS = (".jsonl", ".csv", ".tsv", ".parquet")


class SourceStats:
    """What a pass over the sources read: files with sizes, bytes so far, what was skipped."""

    def __init__(self):
        self.files = []  # (path, size in bytes on disk)
        self.bytes_done = 0  # on-disk bytes of the files read so far
        self.skipped = []  # one-line messages

    def skip(self, message):
        self.skipped.append(message)


def iter_files(spec):
    """Yields the files of `spec` (dataset name, file, directory or glob) one by one.

    Examples:

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("b/2.txt", "a.txt", "b/1.txt", ".hidden"):
    ...     (root / name).parent.mkdir(exist_ok=True); _ = (root / name).write_text("x")
    >>> [str(p.relative_to(root)) for p in iter_files(root)]
    ['a.txt', 'b/1.txt', 'b/2.txt']
    """
    spec = str(spec)
    path = Path(spec).expanduser()
    if spec == "python-stdlib" or spec in REGISTERED_DATASETS or path.is_file():
        yield from resolve_paths(spec)
    elif path.is_dir():
        found = False
        for file in _walk(path):
            found = True
            yield file
        if not found:
            raise DataError(f"{path}: the directory holds no files")
    else:
        yield from resolve_paths(spec)  # a glob (sorted) or the not-found error


def _walk(folder):
    with os.scandir(folder) as entries:
        entries = sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir():
            yield from _walk(entry.path)
        elif entry.is_file():
            yield Path(entry.path)


def file_format(path):
    """`(format suffix, compression suffix or "")` of a file, e.g. `(".jsonl", ".gz")`."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else ""
    kind = suffixes[-1] if suffixes and suffixes[-1] in ROW_FORMATS else ".txt"
    return kind, compression


def open_binary(path, compression):
    """The decompressed byte stream of a file and the raw file under it (for progress)."""
    raw = open(path, "rb")
    if compression == ".gz":
        return gzip.GzipFile(fileobj=raw), raw
    if compression == ".bz2":
        return bz2.BZ2File(raw), raw
    if compression == ".zst":
        zstandard = _optional("zstandard", path)
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw), BLOCK), raw
    return raw, raw


def _optional(module, path):
    try:
        return __import__(module)
    except ImportError:
        raise DataError(f"{path}: reading it needs the {module} package; pip install 'kerasllm[data]'") from None


def iter_pieces(spec, text_field="", on_error="raise", stats=None):
    """Yields the corpus `spec` as `Piece(text, first, last)`, file by file.

    Args:
        spec: a registered dataset, file, directory or glob.
        text_field: field / column of the text in row formats; "" tries common names.
        on_error: "raise" (a `DataError`) or "skip" (skip the bad row or rest of the file,
            recorded in `stats.skipped`).
        stats: a `SourceStats` to fill, or None.

    Examples:

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "d.jsonl"
    >>> _ = path.write_text('{"text": "one"}\\n{"text": "two"}\\n')
    >>> [p.text for p in iter_pieces(path)]
    ['one', 'two']
    """
    return iter_items(spec, text_field, on_error, stats)


def iter_items(spec, text_field="", on_error="raise", stats=None, range_bytes=0):
    """`iter_pieces`, but with plain text files as `TextRange`s of about `range_bytes` bytes
    (`range_bytes = 0`: as pieces). The text of a range is `read_range(range)`; the ranges of a
    file spell what its pieces do, only cut at other line ends.

    Examples:

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "d.txt"
    >>> _ = path.write_text("one\\ntwo\\nthree\\n")
    >>> ranges = list(iter_items(path, range_bytes=5))
    >>> [(r.start, r.stop, r.first, r.last) for r in ranges]
    [(0, 8, True, False), (8, 14, False, True)]
    >>> "".join(read_range(r)[0] for r in ranges)
    'one\\ntwo\\nthree\\n'
    """
    if on_error not in ("raise", "skip"):
        raise DataError(f"data.on_error = {on_error!r}: expected 'raise' or 'skip'")
    stats = stats if stats is not None else SourceStats()
    for path in iter_files(spec):
        size = path.stat().st_size
        stats.files.append((str(path), size))
        base = stats.bytes_done
        kind, compression = file_format(path)
        if range_bytes and kind == ".txt" and not compression:
            for start, stop in text_ranges(path, size, range_bytes):
                stats.bytes_done = base + stop
                yield TextRange(str(path), start, stop, start == 0, stop == size)
            stats.bytes_done = base + size
            continue
        reader = {".jsonl": _jsonl_pieces, ".csv": _table_pieces, ".tsv": _table_pieces,
                  ".parquet": _parquet_pieces}.get(kind, _text_pieces)
        open_document = False
        try:
            for piece in reader(path, compression, text_field, on_error, stats, base):
                open_document = not piece.last
                yield piece
        except DataError as error:
            if on_error == "raise":
                raise
            stats.skip(str(error))
            if open_document:  # the file broke off inside its document: end it there
                yield Piece("", False, True)
        stats.bytes_done = base + size


def text_ranges(path, size, range_bytes):
    """`(start, stop)` byte ranges of a file, each about `range_bytes` long and ending just after
    a newline (after a UTF-8 character within 4 MB of one enormous line); none for an empty file."""
    # (100 MB, char, one process: 2.5 CPU s for both passes, against ~8 s through 1 MB pieces)
    start = 0
    with open(path, "rb") as f:
        while size - start > range_bytes:
            f.seek(start + range_bytes)
            window = f.read(4 * BLOCK + 4)
            cut = window.find(b"\n") + 1
            if not cut:  # one enormous line: cut anyway, before a UTF-8 character (not inside one)
                cut = min(4 * BLOCK, len(window))
                while 0 < cut < len(window) and window[cut] & 0xC0 == 0x80:
                    cut -= 1
            stop = min(start + range_bytes + cut, size)
            yield start, stop
            start = stop
    if start < size:
        yield start, size


def read_range(item):
    """`(text, UTF-8 bytes of it)` of a `TextRange`, as its file's pieces would spell it: the
    byte-order mark at the start dropped, "\r\n" as "\n". Bad bytes are the `DataError`
    `iter_pieces` gives, with the file's byte offset and line."""
    with open(item.path, "rb") as f:
        f.seek(item.start)
        raw = f.read(item.stop - item.start)
    nul = raw.find(b"\x00")
    if nul != -1:
        raise DataError(
            f"{item.path}: looks like a binary file (NUL byte at offset {item.start + nul}); expected UTF-8 text"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        at = item.start + error.start
        raise DataError(
            f"{item.path}: not valid UTF-8 (byte offset {at}, line {_line_of(item.path, at)}); "
            "convert it to UTF-8 first"
        ) from None
    size = len(raw)
    if item.start == 0 and text.startswith("\ufeff"):
        text, size = text[1:], size - 3
    if "\r" in text:
        size -= text.count("\r\n")
        text = text.replace("\r\n", "\n")
    return text, size


def _line_of(path, offset):
    """The 1-based line of byte `offset` in a file (only for error messages)."""
    lines = 1
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(offset, 16 * BLOCK))
            if not block:
                break
            lines, offset = lines + block.count(b"\n"), offset - len(block)
    return lines


def _text_pieces(path, compression, text_field, on_error, stats, base):
    """One document per file, in pieces of about `BLOCK` bytes cut after a newline."""
    stream, raw = open_binary(path, compression)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines, held, first, pending = 0, 1, None, True, ""
    with stream:
        while True:
            block = _read(stream, path, BLOCK)
            end = not block
            if not end:
                text = _decode(decoder, block, path, offset, lines, first and held is None)
                offset, lines = offset + len(block), lines + block.count(b"\n")
                stats.bytes_done = base + raw.tell()
                pending += text
                cut = _cut(pending)
                ready, pending = pending[:cut], pending[cut:]
            else:
                ready, pending = pending, ""
            ready = ready.replace("\r\n", "\n")  # cut after "\n": no "\r\n" is split
            if ready:
                if held is not None:
                    yield Piece(held, first, False)
                    first = False
                held = ready
            if end:
                break
    if held is not None and (not first or held.strip()):  # a blank file is no document
        yield Piece(held, first, True)


def _read(stream, path, size):
    try:
        return stream.read(size)
    except (OSError, EOFError, ValueError) as error:  # corrupt .gz / .bz2 / .zst
        raise DataError(f"{path}: cannot read or decompress ({error})") from None


def _decode(decoder, block, path, offset, lines, at_start):
    nul = block.find(b"\x00")
    if nul != -1:
        raise DataError(
            f"{path}: looks like a binary file (NUL byte at offset {offset + nul}); expected UTF-8 text"
        )
    held = len(decoder.getstate()[0])
    try:
        text = decoder.decode(block)
    except UnicodeDecodeError as error:
        at = offset - held + error.start
        line = lines + block[: max(0, error.start - held)].count(b"\n")
        raise DataError(f"{path}: not valid UTF-8 (byte offset {at}, line {line}); convert it to UTF-8 first") from None
    return text[1:] if at_start and text.startswith("\ufeff") else text


def _cut(text):
    """Where to cut decoded text: after its last paragraph break (if in the second half), else
    its last newline; 0 (keep all pending) when there is none yet and the text is short."""
    half = len(text) // 2
    cut = text.rfind("\n\n", half)
    if cut != -1:
        return cut + 2
    cut = text.rfind("\n")
    if cut != -1:
        return cut + 1
    return len(text) if len(text) >= 4 * BLOCK else 0  # one enormous line: cut anyway


def _pick(path, available, wanted, what):
    """The field/column holding the text: `wanted` (must exist), else a common name."""
    return pick_column(path, available, wanted, TEXT_NAMES, what, "text_field")


def _as_text(value):
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _jsonl_pieces(path, compression, text_field, on_error, stats, base):
    """One document per JSON line."""
    stream, raw = open_binary(path, compression)
    key, offset = None, 0
    with stream:
        for number, line in enumerate(stream, start=1):
            at, offset = offset, offset + len(line)
            if number % 4096 == 0:
                stats.bytes_done = base + raw.tell()
            try:
                record = _json_line(path, number, at, line)
                if record is None:
                    continue
                key = key or _pick(path, list(record), text_field, "field")
                if key not in record:
                    raise DataError(f"{path}, line {number}: the record has no field {key!r}")
            except DataError as error:
                if on_error == "raise" or "binary" in str(error):
                    raise
                stats.skip(str(error))
                continue
            text = _as_text(record[key])
            if text.strip():
                yield Piece(text, True, True)


def _json_line(path, number, offset, line):
    nul = line.find(b"\x00")
    if nul != -1:
        raise DataError(f"{path}: looks like a binary file (NUL byte at offset {offset + nul}); expected UTF-8 text")
    try:
        text = line.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not valid UTF-8 (byte offset {offset + error.start}, line {number}); convert it to UTF-8 first"
        ) from None
    return parse_jsonl_line(path, number, text)


def _table_pieces(path, compression, text_field, on_error, stats, base):
    """One document per row of a `.csv` (comma, quoted) or `.tsv` (tab, unquoted) file."""
    tab = file_format(path)[0] == ".tsv"
    stream, raw = open_binary(path, compression)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    # SST-2 style TSV is not quoted: a lone '"' is text, so quoting is off for tabs.
    reader = csv.reader(text, delimiter="\t" if tab else ",", quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL)
    with text:
        try:
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise DataError(f"{path}: the file is empty; expected a header line")
            column = header.index(_pick(path, header, text_field, "column"))
            for values in reader:
                if reader.line_num % 4096 == 0:
                    stats.bytes_done = base + raw.tell()
                if not values or (len(values) == 1 and not values[0].strip()):
                    continue
                if len(values) != len(header):
                    error = DataError(
                        f"{path}, line {reader.line_num}: {len(values)} fields, expected {len(header)} "
                        f"like the header ({', '.join(header)})"
                    )
                    if on_error == "raise":
                        raise error
                    stats.skip(str(error))
                    continue
                if values[column].strip():
                    yield Piece(values[column], True, True)
        except csv.Error as error:
            what = "looks like a binary file" if "NUL" in str(error) else f"malformed row ({error})"
            raise DataError(f"{path}, line {reader.line_num}: {what}") from None
        except UnicodeDecodeError as error:
            raise DataError(
                f"{path}, line {reader.line_num + 1}: not valid UTF-8 ({error.reason}); convert it to UTF-8 first"
            ) from None


def _parquet_pieces(path, compression, text_field, on_error, stats, base):
    """One document per row of a parquet file, read in record batches."""
    _optional("pyarrow", path)
    import pyarrow.parquet as parquet
    with tempfile.TemporaryDirectory() as scratch:
        if compression:  # parquet needs a seekable file: decompress to a temporary one
            stream, _ = open_binary(path, compression)
            local = Path(scratch) / "file.parquet"
            with stream, open(local, "wb") as out:
                shutil.copyfileobj(stream, out, BLOCK)
        else:
            local = path
        try:
            table = parquet.ParquetFile(local)
        except Exception as error:  # pyarrow raises ArrowInvalid and friends
            raise DataError(f"{path}: not a readable parquet file ({str(error)[:200]})") from None
        column = _pick(path, table.schema_arrow.names, text_field, "column")
        for batch in table.iter_batches(batch_size=4096, columns=[column]):
            for value in batch.column(0).to_pylist():
                text = _as_text(value)
                if text.strip():
                    yield Piece(text, True, True)
