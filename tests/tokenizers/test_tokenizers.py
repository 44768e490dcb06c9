"""Every tokenizer kind: round trips, Python/graph parity, persistence, specials, determinism."""

import sys

import numpy as np
import pytest
import tensorflow as tf

from kerasllm.errors import DataError
from kerasllm.tokenizers import get_tokenizer_class, load_tokenizer, tokenizer_kinds

ENGLISH = "The quick brown fox, jumping over 3 lazy dogs!\nIt's   spaced\tout."
CHINESE = "滿紙荒唐言，一把辛酸淚。都云作者癡，誰解其中味？"
MIXED = "café 😀👍🏽 naïve 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200d 〇 日本語 Ω≈ç√ 𠜎𠜱"
TEXTS = [ENGLISH, CHINESE, MIXED]
CORPUS = [ENGLISH * 5, CHINESE * 5, MIXED * 5, "the dog and the fox are friends\n" * 40]
KINDS = ["char", "byte", "word", "jieba", "wordpiece", "sentencepiece", "bpe"]
EXACT = [k for k in KINDS if k != "wordpiece"]  # WordPiece does not keep whitespace


def _train(kind, **kwargs):
    return get_tokenizer_class(kind).train(CORPUS, vocab_size=kwargs.pop("vocab_size", 400), **kwargs)


@pytest.fixture(scope="module")
def trained():
    return {kind: _train(kind, special_tokens=["<pad>", "<unk>", "<bos>", "<eos>", "<sep>"]) for kind in KINDS}


def test_every_kind_is_registered():
    assert set(KINDS) <= set(tokenizer_kinds())
    with pytest.raises(DataError, match="data.tokenizer = 'nope' is not a known tokenizer; expected one of .*bpe"):
        get_tokenizer_class("nope")


@pytest.mark.parametrize("kind", EXACT)
def test_exact_round_trip(trained, kind):
    tok = trained[kind]
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and tok.unk_id not in ids.tolist()
        assert tok.decode(ids) == text


def test_wordpiece_round_trip_up_to_spacing(trained):
    tok = trained["wordpiece"]
    for text in TEXTS:
        ids = tok.encode(text)
        decoded = tok.decode(ids)
        assert tok.encode(decoded).tolist() == ids.tolist()
        assert decoded.split() != [] and "".join(decoded.split()) == "".join(text.split()).replace("\u200d", "")


@pytest.mark.parametrize("kind", [k if k != "bpe" else pytest.param(k, marks=pytest.mark.slow) for k in KINDS])
def test_graph_encode_decode_match_python(trained, kind):  # bpe: ~45 s of keras-hub graph tracing
    tok = trained[kind]
    ragged = tok.tf_encode(tf.constant(TEXTS))
    for row, text in zip(ragged.to_list(), TEXTS):
        assert row == tok.encode(text).tolist()
    assert tok.tf_encode(tf.constant(ENGLISH)).numpy().tolist() == tok.encode(ENGLISH).tolist()
    decoded = [s.decode("utf-8") for s in tok.tf_decode(ragged).numpy()]
    assert decoded == [tok.decode(tok.encode(t)) for t in TEXTS]
    # inside tf.data, as the pipeline and exported models use it
    ds = tf.data.Dataset.from_tensor_slices(TEXTS).map(tok.tf_encode)
    assert [x.tolist() for x in ds.as_numpy_iterator()] == [tok.encode(t).tolist() for t in TEXTS]


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_are_never_split(trained, kind):
    tok = trained[kind]
    text = "<bos>the fox<sep>滿紙<eos><eos>"
    ids = tok.encode(text).tolist()
    sep = tok.token_to_id("<sep>")
    assert sep not in (tok.unk_id, tok.eos_id) and sep < 5
    assert ids[0] == tok.bos_id and ids[-2:] == [tok.eos_id, tok.eos_id] and ids.count(sep) == 1
    assert tok.tf_encode(tf.constant(text)).numpy().tolist() == ids
    assert tok.decode(ids, skip_special_tokens=False).replace(" ", "") == text.replace(" ", "")


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_and_deterministic_training(trained, kind, tmp_path):
    tok = trained[kind]
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(tok) and loaded.vocabulary_size == tok.vocabulary_size
    # first use inside a graph (as an export does), then eagerly: lazily built tables still work
    graph_ids = tf.function(loaded.tf_encode)(tf.constant([MIXED]))
    assert graph_ids.to_list()[0] == loaded.encode(MIXED).tolist() == tok.encode(MIXED).tolist()
    assert loaded.tf_encode(tf.constant([MIXED])).to_list() == graph_ids.to_list()
    again = _train(kind, special_tokens=tok.special_tokens)
    assert again.fingerprint() == tok.fingerprint()


def test_vocab_size_and_min_count_are_honoured():
    word = _train("word", vocab_size=12)
    assert word.vocabulary_size == 12
    assert _train("word", vocab_size=0, min_count=40).vocabulary_size < _train("word", vocab_size=0).vocabulary_size
    assert _train("byte").vocabulary_size == 260
    assert _train("bpe", vocab_size=300).vocabulary_size == 300
    assert _train("sentencepiece", vocab_size=400).vocabulary_size <= 400
    with pytest.raises(DataError, match=r"sentencepiece: data.vocab_size = 100 cannot hold .* smallest vocab_size that works is \d+"):
        _train("sentencepiece", vocab_size=100)


def test_jieba_missing_is_a_clear_error(monkeypatch):
    from kerasllm.tokenizers import jieba as jieba_module

    jieba_module.import_jieba.cache_clear()
    monkeypatch.setitem(sys.modules, "jieba", None)
    try:
        with pytest.raises(DataError, match=r'needs the jieba package: pip install -e "\.\[zh\]"'):
            _train("jieba")
    finally:
        jieba_module.import_jieba.cache_clear()


@pytest.mark.slow
def test_subwords_on_hongloumeng_beat_characters(shared_data):
    text = (shared_data / "chinese/hongloumeng.txt").read_text(encoding="utf-8")
    train, held_out = text[:400_000], text[400_000:450_000]
    char = get_tokenizer_class("char").train([train])
    sp = get_tokenizer_class("sentencepiece").train([train], vocab_size=6000)
    wp = get_tokenizer_class("wordpiece").train([train], vocab_size=6000)
    per_char = {name: len(t.encode(held_out)) / len(held_out) for name, t in [("char", char), ("sp", sp), ("wp", wp)]}
    assert per_char["sp"] < 0.85 * per_char["char"], per_char
    assert per_char["wp"] < per_char["char"], per_char
    assert sp.decode(sp.encode(held_out)) == held_out
    jieba = get_tokenizer_class("jieba").train([train], vocab_size=20000)
    sample = held_out[:5000]
    seen_chars = set(train)
    expected = "".join(c if c in seen_chars else "\ufffd" for c in sample)  # unseen chars: <unk>
    python_ids = jieba.encode(sample)
    assert len(python_ids) < 0.8 * len(sample)
    assert jieba.decode(python_ids) == expected
    # serving segments by forward maximum matching: close to jieba, not identical (and a Han
    # run holding an unseen character is one <unk>, so compare on seen characters)
    seen = "".join(c for c in sample if c in seen_chars)
    graph_ids = jieba.tf_encode(tf.constant(seen)).numpy()
    assert jieba.decode(graph_ids) == seen
    python_ids = jieba.encode(seen)
    assert abs(len(graph_ids) - len(python_ids)) < 0.1 * len(python_ids)
