import numpy as np
import pytest

from kerasllm.generation import Generator, sample_next
from kerasllm.models import GPT, LSTMLanguageModel


@pytest.fixture(scope="module")
def gpt():
    model = GPT(vocab_size=31, block_size=24, n_layer=2, n_head=2, n_embd=16)
    model.build((None, 24))
    return model


def test_cached_greedy_equals_uncached(gpt):
    generator = Generator(gpt)
    prompt = np.random.default_rng(0).integers(0, 31, (3, 5))
    cached = generator.generate(prompt, 15, temperature=0)
    full = generator.generate(prompt, 15, temperature=0, use_cache=False)
    np.testing.assert_array_equal(cached, full)
    assert cached.shape == (3, 20)


def test_cached_logits_match_full_forward(gpt):
    x = np.random.default_rng(1).integers(0, 31, (2, 24)).astype("int32")
    full = np.asarray(gpt(x))
    cache = gpt.init_cache(2, 24)
    logits, cache = gpt.call_with_cache(x[:, :10], cache, 0)
    np.testing.assert_allclose(np.asarray(logits), full[:, :10], atol=1e-5)
    for t in range(10, 24):
        step, cache = gpt.call_with_cache(x[:, t : t + 1], cache, t)
        np.testing.assert_allclose(np.asarray(step)[:, 0], full[:, t], atol=1e-5)


def test_generation_past_the_context_and_seeding(gpt):
    generator = Generator(gpt)
    a = generator.generate([[1, 2, 3]], 40, temperature=1.0, top_k=5, seed=3)
    b = generator.generate([[1, 2, 3]], 40, temperature=1.0, top_k=5, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 43)


def test_lstm_generation_matches_full_forward():
    model = LSTMLanguageModel(vocab_size=17, block_size=8, n_layer=1, n_embd=8)
    model.build((None, 8))
    out = Generator(model).generate([[1, 2, 3]], 6, temperature=0)
    for t in range(3, 9):
        logits = np.asarray(model(out[:, :t].astype("int32")))
        assert out[0, t] == logits[0, -1].argmax()


def test_samplers():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    draws = np.array([sample_next(logits, rng, top_k=2)[0] for _ in range(300)])
    assert set(draws) <= {0, 1}
    draws = np.array([sample_next(logits, rng, top_p=0.7)[0] for _ in range(300)])
    assert set(draws) <= {0, 1} and (draws == 1).any()
    assert sample_next(logits, rng, temperature=0)[0] == 0
    draws = np.array([sample_next(logits, rng, temperature=1.0)[0] for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)
