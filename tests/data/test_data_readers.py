import json

import pytest

from kerasllm.data.readers import read_documents, read_labelled
from kerasllm.errors import DataError


def test_sst2_tsv(shared_data):
    texts, labels = read_labelled(shared_data / "sentiment/sst2/dev.tsv")
    assert len(texts) == len(labels) == 6735
    assert texts[0].startswith("the expressive power of the camera") and labels[0] == 1
    assert set(labels) == {0, 1}


def test_chnsenticorp_csv_with_quotes(shared_data):
    texts, labels = read_labelled(shared_data / "sentiment/chnsenticorp/ChnSentiCorp_htl_all.csv")
    assert len(texts) == 7765  # 7766 rows, one with an empty review is skipped
    assert '"蔡陆线"' in texts[0] and labels.count(1) == 5322


def test_jsonl_labelled_and_explicit_columns(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"body": "great", "stars": "pos"}, {"body": "awful", "stars": "neg"},
    ]) + "\n")
    assert read_labelled(path, "body", "stars") == (["great", "awful"], ["pos", "neg"])
    with pytest.raises(DataError, match=r"data.jsonl: no column 'txt' \(finetune.text_column or --text-column\); the file has: 'body', 'stars'"):
        read_labelled(path, text_column="txt", label_column="stars")
    with pytest.raises(DataError, match="cannot tell which column holds the label"):
        read_labelled(path, text_column="body")


def test_read_documents_keeps_boundaries(tmp_path):
    (tmp_path / "a.txt").write_text("first\n\nstill first")
    (tmp_path / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third"}\n')
    (tmp_path / "c.csv").write_text('title,content\nx,"fourth, with comma"\ny,fifth\n')
    assert read_documents(tmp_path) == ["first\n\nstill first", "second", "third", "fourth, with comma", "fifth"]
    assert read_documents(tmp_path / "b.jsonl", text_field="text") == ["second", "third"]


def test_bad_inputs_name_file_and_line(tmp_path):
    with pytest.raises(DataError, match="missing.tsv: no such file"):
        read_labelled(tmp_path / "missing.tsv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv: the file is empty"):
        read_labelled(empty)
    binary = tmp_path / "blob.tsv"
    binary.write_bytes(b"sentence\tlabel\n\x00\x01")
    with pytest.raises(DataError, match=r"blob.tsv: looks like a binary file \(NUL byte at offset 15\)"):
        read_labelled(binary)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\u00e9,1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv: not valid UTF-8 \(byte offset 14, line 2\)"):
        read_labelled(latin)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok", "label": 1}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"broken.jsonl, line 2: not valid JSON"):
        read_labelled(broken)
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("sentence\tlabel\ngood\t1\nbad\n")
    with pytest.raises(DataError, match=r"ragged.tsv, line 3: 1 fields, expected 2"):
        read_labelled(ragged)
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("text,label\ngood,\n")
    with pytest.raises(DataError, match=r"nolabel.csv, line 2: empty label"):
        read_labelled(nolabel)
    with pytest.raises(DataError, match=r"must be a .tsv, .csv or .jsonl"):
        read_labelled(tmp_path / "x.txt")
    with pytest.raises(DataError, match=r"b.jsonl: no field 'body'"):
        (tmp_path / "b.jsonl").write_text('{"text": "x"}\n')
        read_documents(tmp_path / "b.jsonl", text_field="body")
