"""A ragged batch's prompts prefill packed: the cache and logits `prefill` gives, at less cost."""

import numpy as np
import pytest

from kerasllm.generation import Generator, loop
from kerasllm.generation.generator import _right_padded
from kerasllm.models import GPT

LENGTH = 48
PROMPT_LENGTHS = (30, 3, 17, 1, 9, 25, 5, 12)  # 102 tokens: 3 packed rows of 48, 2 passes of 2 rows


def _model(kind):
    if kind == "learned":
        model = GPT(vocab_size=41, block_size=LENGTH, n_layer=2, n_head=2, n_embd=16)
    else:
        model = GPT(vocab_size=41, block_size=LENGTH, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, positions="rope",
                    norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False)
    model.build((None, LENGTH))
    return model


def _prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(1, 41, n).astype("int32") for n in PROMPT_LENGTHS]


def test_pack_prompts_keeps_every_prompt_whole_and_right_aligned():
    rows = _prompts()
    packing = loop.pack_prompts(rows, LENGTH)
    start = max(PROMPT_LENGTHS)
    assert int(packing["passes"]) == 2  # first-fit decreasing: 30+17+1, 25+12+9, 5+3; 2 rows a pass
    assert packing["ids"].shape == (4, loop.rows_per_pass(len(rows)), LENGTH)
    packing = {name: a.reshape(-1, LENGTH) if a.ndim == 3 else a for name, a in packing.items()}
    for b, row in enumerate(rows):
        g, last = packing["last"][b]
        cells = np.flatnonzero(packing["segments"][g] == b)
        np.testing.assert_array_equal(cells, np.arange(last - len(row) + 1, last + 1))  # one contiguous run
        np.testing.assert_array_equal(packing["ids"][g, cells], row)
        np.testing.assert_array_equal(packing["rows"][g, cells], b)
        np.testing.assert_array_equal(packing["slots"][g, cells], np.arange(start - len(row), start))
    filler = packing["segments"] == -1
    assert (packing["slots"][filler] == LENGTH - 1).all() and (packing["rows"][filler] == 0).all()


@pytest.mark.parametrize("kind", ["learned", "rope"])
def test_packed_prefill_fills_the_cache_prefill_fills(kind):
    model = _model(kind)
    rows = _prompts()
    lengths = np.array(PROMPT_LENGTHS, np.int32)
    start = int(lengths.max())
    offsets = start - lengths
    buffer, _ = _right_padded(rows, LENGTH)
    aligned = loop._roll_rows(buffer, offsets)
    logits, cache = loop.prefill(model, aligned, start, offsets)
    packed_logits, packed_cache = loop.packed_prefill(model, loop.pack_prompts(rows, LENGTH), len(rows), LENGTH)
    np.testing.assert_allclose(np.asarray(packed_logits), np.asarray(logits), atol=1e-5)
    for layer, packed_layer in zip(cache, packed_cache):
        for chunked, packed in zip(layer, packed_layer):  # keys, values
            chunked, packed = np.asarray(chunked), np.asarray(packed)
            for b in range(len(rows)):
                np.testing.assert_allclose(packed[b, :, offsets[b] : start], chunked[b, :, offsets[b] : start], atol=1e-5)


def test_generate_is_the_same_with_and_without_packing():
    model = _model("rope")
    rows = _prompts()
    generator = Generator(model)
    settings = dict(max_new_tokens=12, temperature=0.9, top_k=8, seed=5)
    packed = generator.generate(rows, **settings)
    generator._packs = False  # the chunked prefill, as an LSTM or the SavedModel runs it
    chunked = generator.generate(rows, **settings)
    for a, b in zip(packed, chunked):
        np.testing.assert_array_equal(a, b)
