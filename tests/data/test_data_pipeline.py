"""Cleaning, augmentation, the token cache, windows, resume exactness, classification batches,
and the two data recipes end to end."""

from pathlib import Path

import numpy as np
import pytest

from kerasllm.config import load_config
from kerasllm.data import (
    TextAugmenter,
    classification_dataset,
    clean_documents,
    encode_documents,
    lm_dataset,
    load_stopwords,
    load_synonyms,
    remove_stopwords,
)
from kerasllm.data.cache import cached_token_ids, cached_tokenizer
from kerasllm.errors import ConfigError, DataError
from kerasllm.tokenizers import get_tokenizer_class


def test_cleaning_removes_html_and_normalizes_width():
    docs = [
        "<html><style>p {}</style><p>Ｆｕｌｌ－ｗｉｄｔｈ&nbsp;ＡＢＣ１２３ &amp; ｶﾀｶﾅ</p><script>alert(1)</script></html>",
        "Full-width ABC123 & カタカナ",
        "  Spaced \t\t out\n\n\n\nlines  ",
    ]
    cleaned = clean_documents(docs, "html,nfkc,whitespace")
    assert cleaned == ["Full-width ABC123 & カタカナ", "Full-width ABC123 & カタカナ", "Spaced out\n\nlines"]
    assert clean_documents(docs, "html,nfkc,whitespace,lowercase,dedupe") == [
        "full-width abc123 & カタカナ", "spaced out\n\nlines"
    ]
    with pytest.raises(ConfigError, match="data.clean: unknown step 'htm'; expected .*html, nfkc"):
        clean_documents(docs, "htm")


def test_stopwords_english_chinese_and_user_file(tmp_path):
    assert remove_stopwords("it 's not a good film , is it", load_stopwords("en")) == "not good film ,"
    assert remove_stopwords("这个酒店的服务不好", load_stopwords("zh")) == "酒店服务不好"
    user = tmp_path / "stop.txt"
    user.write_text("film\nmovie\n")
    assert remove_stopwords("a fine film", load_stopwords(f"en,{user}")) == "fine"
    with pytest.raises(DataError, match="data.stopwords: 'missing.txt' is neither a built-in list"):
        load_stopwords("missing.txt")


def test_augmentation_rates_seeds_and_synonyms(tmp_path):
    texts = ["this is a really good and moving film about people"] * 4 + ["这个酒店的服务很好"]
    table = tmp_path / "syn.tsv"
    table.write_text("good\tgreat,fine\nfilm\tmovie\n")
    synonyms = load_synonyms(table)
    assert TextAugmenter(seed=1)(texts) == texts  # all rates 0: unchanged
    full = TextAugmenter(synonym=1.0, synonyms=synonyms, seed=1)(texts[:1])[0]
    assert "good" not in full.split() and "movie" in full.split()
    augmenter = TextAugmenter(deletion=0.3, swap=0.2, insertion=0.2, synonym=0.5, synonyms=synonyms, seed=3)
    first, again, other_epoch = augmenter(texts), augmenter(texts), augmenter(texts, epoch=1)
    assert first == again and first != other_epoch and len(first) == len(texts)
    assert first != texts
    deleted = TextAugmenter(deletion=0.5, seed=0)(texts)
    assert sum(len(t.split()) for t in deleted[:4]) < sum(len(t.split()) for t in texts[:4])
    inserted = TextAugmenter(insertion=0.3, seed=0)(texts)
    assert all(len(a.split()) > len(b.split()) for a, b in zip(inserted[:4], texts[:4]))
    swapped = TextAugmenter(swap=0.5, seed=0)(texts[:1])[0]
    assert sorted(swapped.split()) == sorted(texts[0].split()) and swapped != texts[0]
    with pytest.raises(DataError, match="synonym substitution needs a synonym table"):
        TextAugmenter(synonym=0.1)
    bad = tmp_path / "bad.tsv"
    bad.write_text("good great\n")
    with pytest.raises(DataError, match=r"bad.tsv, line 1: expected 'word<TAB>synonym"):
        load_synonyms(bad)


def test_cached_ids_equal_fresh_tokenization(tmp_path):
    docs = ["first document, with words 😀", "第二个文档", "third\n" * 50]
    tokenizer, hit = cached_tokenizer("bpe", docs, vocab_size=300, cache_dir=tmp_path)
    assert not hit
    again, hit = cached_tokenizer("bpe", docs, vocab_size=300, cache_dir=tmp_path)
    assert hit and again.fingerprint() == tokenizer.fingerprint()
    fresh = encode_documents(tokenizer, docs, add_bos=True)
    cold, hit = cached_token_ids(tokenizer, docs, tmp_path, add_bos=True)
    assert not hit and cold.dtype == np.uint16
    warm, hit = cached_token_ids(tokenizer, docs, tmp_path, add_bos=True)
    assert hit and isinstance(warm, np.memmap)
    np.testing.assert_array_equal(warm, fresh)
    assert fresh[0] == tokenizer.bos_id and (fresh == tokenizer.eos_id).sum() == 3
    # a different tokenizer or corpus is a different cache entry
    other, hit = cached_token_ids(get_tokenizer_class("byte").train([]), docs, tmp_path, add_bos=True)
    assert not hit and len(other) != len(warm)


def test_resume_from_iterator_position_yields_the_same_batches():
    ids = np.arange(1000, dtype=np.uint16)
    full = [x.numpy() for x, _ in lm_dataset(ids, 16, 4, stride=8, seed=5).take(70)]  # > 2 epochs
    for start in (1, 30, 62):  # within the first epoch, across the boundary, in the third
        resumed = [x.numpy() for x, _ in lm_dataset(ids, 16, 4, stride=8, seed=5, start_batch=start).take(70 - start)]
        assert len(resumed) == 70 - start
        for a, b in zip(full[start:], resumed):
            np.testing.assert_array_equal(a, b)
    epoch = np.concatenate(full)[:, 0]  # 123 windows per epoch at stride 8
    assert sorted(epoch[:123].tolist()) == list(range(0, 123 * 8, 8))  # each window once per epoch
    assert epoch[:123].tolist() != epoch[123:246].tolist()  # reshuffled every epoch
    other_seed = [x.numpy() for x, _ in lm_dataset(ids, 16, 4, stride=8, seed=6).take(3)]
    assert not np.array_equal(other_seed[0], full[0])


def test_windows_with_stride_and_cardinality():
    ids = np.arange(200, dtype=np.uint32)
    ds = lm_dataset(ids, 10, 3, stride=5, shuffle=False, repeat=False)
    batches = [(x.numpy(), y.numpy()) for x, y in ds]
    assert len(batches) == ds.cardinality().numpy() == 12  # 38 windows of 11 at stride 5
    starts = np.concatenate([x[:, 0] for x, _ in batches])
    assert starts.tolist() == list(range(0, 5 * len(starts), 5))
    for x, y in batches:
        np.testing.assert_array_equal(x + 1, y)
        assert x.dtype == np.int32


def test_classification_batches_pad_and_mask():
    tok = get_tokenizer_class("word").train(["good film", "bad film indeed"])
    sequences = tok.encode_batch(["good film", "bad film indeed indeed", "good"])
    ds = classification_dataset(sequences, [1, 0, 1], batch_size=2, max_length=3, pad_id=tok.pad_id, shuffle=False)
    (first, labels), (second, last_labels) = list(ds)
    ids, mask = first["token_ids"].numpy(), first["padding_mask"].numpy()
    assert ids.shape == (2, 3) and labels.numpy().tolist() == [1, 0]
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    assert ids[0, 2] == tok.pad_id and tok.decode(ids[1]) == "bad film indeed"
    assert second["token_ids"].shape == (1, 3) and last_labels.numpy().tolist() == [1]
    shuffled = [y.numpy().tolist() for _, y in classification_dataset(sequences, [1, 0, 1], 3, 3, seed=1)]
    assert sorted(shuffled[0]) == [0, 1, 1]
    with pytest.raises(DataError, match="3 sequences but 2 labels"):
        classification_dataset(sequences, [1, 0], 2, 3)


@pytest.mark.slow
@pytest.mark.parametrize("recipe, dataset", [
    ("wikitext2_wordpiece_gpt", "wikitext-2/train.txt"),
    ("hongloumeng_char_gpt", "chinese/hongloumeng.txt"),
])
def test_data_recipes_run_end_to_end(recipe, dataset, shared_data, tiny_overrides, tmp_path, monkeypatch):
    from kerasllm.training import prepare_data, pretrain

    monkeypatch.setenv("KERASLLM_CACHE_DIR", str(tmp_path / "cache"))
    sample = tmp_path / Path(dataset).name  # the first 300 kB keep the test short
    with open(shared_data / dataset, encoding="utf-8") as f:
        sample.write_text(f.read(300_000), encoding="utf-8")
    overrides = [o for o in tiny_overrides if not o.startswith("sample.")] + [
        f"data.dataset={sample}", "data.vocab_size=2000", "sample.max_new_tokens=2",
    ]
    config = load_config(recipe, overrides)
    logs = []
    model, tokenizer, metrics = pretrain(config, tmp_path / "run", log=logs.append, verbose=0)
    assert metrics["steps"] == 6 and np.isfinite(metrics["val_loss"])
    assert tokenizer.kind == config.data.tokenizer
    assert any("tokenized, cached" in line for line in logs), logs
    # the same data again comes from the cache: tokenizer and ids
    logs = []
    data = prepare_data(load_config(recipe, overrides), log=logs.append)
    assert "(token cache)" in logs[0] and "(from cache)" in logs[0], logs
    assert data.tokenizer.fingerprint() == tokenizer.fingerprint()
