"""Preparation into the token store: ids equal the in-memory path, workers change nothing, a
killed preparer resumes to a byte-identical store, splits need no copy, windows stream."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT
from kerasllm.config import load_config
from kerasllm.data import encode_documents, lm_dataset
from kerasllm.data.prepare import prepare_lm_data, sample_texts
from kerasllm.data.sources import Piece
from kerasllm.data.store import TokenView


def corpus(folder, files=6, words=3000, seed=0):
    rng = np.random.default_rng(seed)
    vocab = ["the", "cat", "sat", "on", "mat", "红", "楼", "梦", "and", "\n", "\n\n", "so", "it", "goes"]
    folder.mkdir(parents=True, exist_ok=True)
    docs = []
    for i in range(files):
        text = " ".join(rng.choice(vocab, size=words)) + "\n"
        (folder / f"{i:02d}.txt").write_text(text, encoding="utf-8")
        docs.append(text)
    return docs


def config(data_dir, cache, *extra):
    return load_config("default", [f'data.dataset="{data_dir}"', f'data.cache_dir="{cache}"', *extra]).data


def store_files(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_store_ids_equal_in_memory_encoding_and_workers_change_nothing(tmp_path, tokenizer):
    docs = corpus(tmp_path / "data")
    settings = [f"data.tokenizer={tokenizer}", "data.vocab_size=300", "data.shard_mb=0.004", "data.add_bos=true"]
    one = prepare_lm_data(config(tmp_path / "data", tmp_path / "c1", "data.num_proc=1", *settings), log=lambda *_: None)
    two = prepare_lm_data(config(tmp_path / "data", tmp_path / "c2", "data.num_proc=2", *settings), log=lambda *_: None)
    assert len(one.store.index["shards"]) > 4
    assert isinstance(one.train_ids, TokenView)
    expected = encode_documents(one.tokenizer, docs, add_bos=True)
    np.testing.assert_array_equal(np.concatenate([one.train_ids[:], one.val_ids[:]]), expected)
    assert store_files(one.store.directory) == store_files(two.store.directory)  # byte for byte
    assert one.store.documents == 6 and one.store.index["sources"]["files"] == 6


def test_document_split_holds_out_whole_documents(tmp_path):
    docs = corpus(tmp_path / "data", files=10, words=200)
    data = prepare_lm_data(config(tmp_path / "data", tmp_path / "c", "data.split=document", "data.val_fraction=0.2"),
                           log=lambda *_: None)
    ids = data.tokenizer.encode_batch(docs)
    lengths = [len(i) + 1 for i in ids]
    assert len(data.val_ids) + len(data.train_ids) == sum(lengths)
    val_text = data.tokenizer.decode(data.val_ids[:], skip_special_tokens=False)
    assert sum(doc in val_text for doc in docs) == 2 and val_text.count("<eos>") == 2


def test_views_stream_the_same_batches_as_arrays(tmp_path):
    corpus(tmp_path / "data")
    data = prepare_lm_data(config(tmp_path / "data", tmp_path / "c", "data.shard_mb=0.003"), log=lambda *_: None)
    array = np.asarray(data.train_ids)
    for start in (0, 37):
        a = [x.numpy() for x, _ in lm_dataset(array, 16, 4, stride=8, seed=3, start_batch=start).take(20)]
        b = [x.numpy() for x, _ in lm_dataset(data.train_ids, 16, 4, stride=8, seed=3, start_batch=start).take(20)]
        np.testing.assert_array_equal(a, b)
    halves = [lm_dataset(data.train_ids, 16, 4, seed=3, num_shards=2, shard_index=i).take(5) for i in (0, 1)]
    whole = [x.numpy() for x, _ in lm_dataset(data.train_ids, 16, 4, seed=3).take(5)]
    joined = [np.concatenate([a.numpy(), b.numpy()]) for (a, _), (b, _) in zip(*halves)]
    np.testing.assert_array_equal(joined, whole)  # two workers read disjoint halves of each batch


def test_the_tokenizer_sample_is_bounded_seeded_and_spans_the_corpus():
    pieces = [Piece(f"{i:04d}", True, True) for i in range(1000)]
    sample = sample_texts(pieces, 400, seed=7)
    assert len(sample) == 100 and sample == sorted(sample)
    assert int(sample[0]) < 100 and int(sample[-1]) > 900  # from across the whole corpus
    assert sample == sample_texts(pieces, 400, seed=7) != sample_texts(pieces, 400, seed=8)
    assert len(sample_texts(pieces, 0, seed=7)) == 1000


def prepare_command(data_dir, cache):
    return [sys.executable, "-m", "kerasllm.recipes.prepare", "--data", str(data_dir),
            "--set", f'data.cache_dir="{cache}"', "--set", "data.shard_mb=0.002", "--set", "data.num_proc=2",
            "--set", "data.tokenizer=bpe", "--set", "data.vocab_size=300"]


@pytest.mark.slow
def test_a_killed_preparation_resumes_to_a_byte_identical_store(tmp_path):
    corpus(tmp_path / "data", files=48, words=1500)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT))
    reference = subprocess.run(prepare_command(tmp_path / "data", tmp_path / "ref"), env=env, cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    ref_store = next((tmp_path / "ref" / "stores").iterdir())
    shards = len(list(ref_store.glob("shard-*.json")))
    assert shards > 30
    for kill_after in (0, shards // 2):  # as the store is started / part-way through the shards
        cache = tmp_path / f"killed{kill_after}"
        process = subprocess.Popen(prepare_command(tmp_path / "data", cache), env=env, cwd=REPO_ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            written = len(list(cache.glob("stores/*/shard-*.json")))
            if (kill_after == 0 and (cache / "stores").exists()) or (kill_after and written >= kill_after):
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not list(cache.glob("stores/*/index.json")), "the run finished before it was killed"
        again = subprocess.run(prepare_command(tmp_path / "data", cache), env=env, cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        if kill_after:
            assert "prepare: resumed" in again.stdout, again.stdout
        assert store_files(next((cache / "stores").iterdir())) == store_files(ref_store)


def test_sentencepiece_with_more_characters_than_vocabulary_falls_back_to_bytes():
    from kerasllm.errors import DataError
    from kerasllm.tokenizers import SentencePieceTokenizer

    rng = np.random.default_rng(0)
    chars = np.array([chr(0x4E00 + i) for i in range(1500)])
    weights = 1.0 / np.arange(1, 1501) ** 1.3  # Zipf-like, as characters in a novel
    text = "".join(rng.choice(chars, size=60000, p=weights / weights.sum()))
    lines = [text[i : i + 60] + "\n" for i in range(0, len(text), 60)]
    assert len(set(text)) > 1000
    tok = SentencePieceTokenizer.train(lines, vocab_size=1200)  # 939 characters fit of 1,400+
    rare = "".join(sorted(set(text), key=text.count)[:3])
    assert tok.decode(tok.encode(lines[0] + rare)) == lines[0] + rare  # rare characters as bytes
    with pytest.raises(DataError, match=r"data.vocab_size = 300 cannot hold .* the smallest vocab_size that works is \d+"):
        SentencePieceTokenizer.train(lines, vocab_size=300)


@pytest.mark.slow
def test_preparing_a_few_hundred_megabytes_stays_in_bounded_memory(tmp_path):
    """Peak memory does not grow with the corpus: the old in-memory path took ~20 bytes of RSS
    per byte of text (+3 GB from 50 to 200 MB)."""
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "\n"])
    chunk = " ".join(rng.choice(words, size=200_000))

    def peak_preparing(megabytes):
        path, size = tmp_path / f"big{megabytes}.txt", 0
        with open(path, "w", encoding="utf-8") as f:
            while size < megabytes * 1e6:
                f.write(chunk)
                size += len(chunk)
        script = (
            "import resource, sys; from kerasllm.recipes.prepare import main; "
            "main(sys.argv[1:]); print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
        )
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT))
        done = subprocess.run([sys.executable, "-c", script, "--data", str(path), "--set",
                               f'data.cache_dir="{tmp_path / "cache"}"', "--set", "data.num_proc=2"],
                              env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split("peak ")[1])

    small, large = peak_preparing(50), peak_preparing(200)
    # Quiet 2-core CPU: about 1.0 GB for 200 MB. Inside the parallel suite the absolute peak has
    # been seen up to 3.07 GB (unexplained; see benchmarks/RESULTS.md, token store), so what is
    # asserted is the property itself: 4x the text, about the same memory.
    assert large - small < 1e9, f"peak RSS {small / 1e9:.2f} GB for 50 MB, {large / 1e9:.2f} GB for 200 MB"


def test_one_process_prepares_on_one_core_and_restores_the_setting(tmp_path, monkeypatch):
    """`data.num_proc = 1`: tokenizers' thread pool is off while the tokenizer trains and encodes."""
    from kerasllm.data import prepare

    corpus(tmp_path / "data", files=2, words=300)
    seen = []
    real_encode = prepare.encode_shard

    def encode(*args, **kwargs):
        seen.append(os.environ.get("TOKENIZERS_PARALLELISM"))
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(prepare, "encode_shard", encode)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    settings = ["data.tokenizer=bpe", "data.vocab_size=300", "data.num_proc=1"]
    prepare_lm_data(config(tmp_path / "data", tmp_path / "c", *settings), log=lambda *_: None)
    assert seen and set(seen) == {"false"}
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"  # the caller's setting is back
