"""The token store: shard round trips, views across shards and documents, incomplete shards."""

import json

import numpy as np
import pytest

from kerasllm.data.store import (
    TokenStore,
    id_dtype,
    read_shard_record,
    remove_temporary_files,
    shard_name,
    write_index,
    write_shard,
)
from kerasllm.errors import DataError


def make_store(folder, shards, dtype=np.uint16):
    """Shards given as lists of documents (lists of ids); documents never span shards here."""
    records = []
    for i, docs in enumerate(shards):
        ids = np.concatenate([np.asarray(d, dtype) for d in docs]) if docs else np.zeros([0], dtype)
        records.append(write_shard(folder, i, ids, np.cumsum([len(d) for d in docs]), text_bytes=len(ids)))
    write_index(folder, dtype, 1000, "abc", records, [("x.txt", 10)])
    return TokenStore(folder)


def test_round_trip_views_and_windows(tmp_path):
    store = make_store(tmp_path, [[[1, 2, 3], [4, 5]], [], [[6, 7, 8, 9]], [[10], [11, 12]]])
    whole = np.arange(1, 13)
    assert len(store) == 12 and store.documents == 5 and store.dtype == np.uint16
    assert isinstance(store.shard(0), np.memmap)
    np.testing.assert_array_equal(np.asarray(store.view()), whole)
    view = store.view(2, 11)  # crosses the empty shard and two boundaries
    np.testing.assert_array_equal(view[:], whole[2:11])
    np.testing.assert_array_equal(view[3:7], whole[5:9])
    np.testing.assert_array_equal(view.windows([0, 2, 5], 4), [whole[2:6], whole[4:8], whole[7:11]])
    assert store.document_ends().tolist() == [3, 5, 9, 10, 12]
    docs = store.documents_view([True, False, True, True, False])  # docs 0, 2, 3: two segments
    assert len(docs.starts) == 2
    np.testing.assert_array_equal(docs[:], [1, 2, 3, 6, 7, 8, 9, 10])
    np.testing.assert_array_equal(docs.windows([1], 4), [[2, 3, 6, 7]])  # across the segment gap
    with pytest.raises(IndexError):
        view.windows([7], 4)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [s["first_token"] for s in index["shards"]] == [0, 5, 5, 9]
    assert index["tokenizer_fingerprint"] == "abc" and index["sources"]["files"] == 1


def test_dtype_follows_the_vocabulary():
    assert id_dtype(65536) == np.uint16 and id_dtype(65537) == np.uint32


def test_incomplete_shards_are_not_counted(tmp_path):
    write_shard(tmp_path, 0, np.arange(4, dtype=np.uint16), [4], text_bytes=4)
    assert read_shard_record(tmp_path, 0, np.uint16)["tokens"] == 4
    assert read_shard_record(tmp_path, 0, np.uint32) is None  # sizes disagree with the dtype
    (tmp_path / shard_name(1, "bin")).write_bytes(b"\0\0")  # ids without a record: killed mid-shard
    assert read_shard_record(tmp_path, 1, np.uint16) is None
    (tmp_path / "shard-00002.bin.tmp123").write_bytes(b"\0")
    remove_temporary_files(tmp_path)
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(DataError, match="not a complete token store"):
        TokenStore(tmp_path)


def test_a_store_with_an_id_out_of_range_is_rebuilt(tmp_path):
    """Reuse checks the largest id each shard recorded when it was written (no scan)."""
    from kerasllm.config import DataConfig
    from kerasllm.data.prepare import prepare_lm_data

    (tmp_path / "corpus.txt").write_text("to be or not to be, that is the question\n" * 50, encoding="utf-8")
    data = DataConfig(dataset=str(tmp_path / "corpus.txt"), cache_dir=str(tmp_path / "cache"), num_proc=1)
    first = prepare_lm_data(data, log=lambda *_: None)
    vocab = first.tokenizer.vocabulary_size
    shard = first.store.directory / first.store.index["shards"][0]["file"]
    assert first.store.index["shards"][0]["max_id"] == int(np.fromfile(shard, dtype=first.store.dtype).max())
    index_path = first.store.directory / "index.json"
    index = json.loads(index_path.read_text())
    index["shards"][0]["max_id"] = vocab + 7  # a damaged cache: an id no model row exists for
    index_path.write_text(json.dumps(index))
    lines = []
    again = prepare_lm_data(data, log=lines.append)
    assert any("token store is damaged" in line and f"id {vocab + 7}" in line for line in lines), lines
    assert int(np.asarray(again.train_ids).max()) < vocab
