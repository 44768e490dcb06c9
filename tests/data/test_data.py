import numpy as np
import pytest

from kerasllm.data import encode_documents, lm_dataset, load_corpus, split_documents
from kerasllm.data.corpus import python_stdlib_files
from kerasllm.errors import DataError
from kerasllm.tokenizers import CharTokenizer


def test_python_stdlib_corpus_is_a_few_megabytes():
    files = python_stdlib_files()
    size = sum(f.stat().st_size for f in files)
    assert len(files) > 100 and 2e6 < size < 8e6


def test_windows_are_shifted_by_one_and_reproducible():
    ids = np.arange(1000, dtype=np.int32)
    ds = lm_dataset(ids, block_size=16, batch_size=4, seed=7)
    batches = [b for _, b in zip(range(5), ds)]
    for x, y in batches:
        assert x.shape == (4, 16)
        np.testing.assert_array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])
        np.testing.assert_array_equal(x.numpy() + 1, y.numpy())  # ids are consecutive here
    again = [b for _, b in zip(range(5), lm_dataset(ids, block_size=16, batch_size=4, seed=7))]
    for (x1, _), (x2, _) in zip(batches, again):
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())


def test_position_split_has_no_overlap():
    docs = ["a" * 50, "b" * 30, "c" * 20]
    train, val = split_documents(docs, val_fraction=0.25)
    assert "".join(train) + "".join(val) == "".join(docs)
    assert len("".join(val)) == 25


def test_document_split_holds_out_whole_documents():
    docs = [f"doc{i}" for i in range(20)]
    train, val = split_documents(docs, val_fraction=0.2, split="document", seed=1)
    assert len(val) == 4 and not set(train) & set(val) and set(train) | set(val) == set(docs)
    assert split_documents(docs, 0.2, "document", seed=1) == (train, val)


def test_eos_between_documents():
    tok = CharTokenizer.train(["ab"])
    ids = encode_documents(tok, ["ab", "ba"])
    assert ids.tolist() == [4, 5, tok.eos_id, 5, 4, tok.eos_id]


def test_too_little_data_is_a_clear_error():
    with pytest.raises(DataError, match="validation split has 10 tokens"):
        lm_dataset(np.arange(10), block_size=16, batch_size=2, name="validation")


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_corpus(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.txt: the file is empty"):
        load_corpus(str(empty))
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(DataError, match="blob.bin: looks like a binary file"):
        load_corpus(str(binary))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt: not valid UTF-8 \(byte offset 3, line 1\)"):
        load_corpus(str(latin))


def test_directory_and_glob(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    assert load_corpus(str(tmp_path)) == ["alpha", "beta"]
    assert load_corpus(str(tmp_path / "*.txt")) == ["alpha", "beta"]


def test_registered_dataset_from_data_dir(shared_data, monkeypatch):
    monkeypatch.setenv("KERASLLM_DATA_DIR", str(shared_data))
    docs = load_corpus("tinyshakespeare")
    assert docs[0].startswith("First Citizen:")
