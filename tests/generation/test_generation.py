import numpy as np
import pytest

from keras import ops

from kerasllm.generation import Generator, loop, sample_tokens
from kerasllm.generation.sampling import sampling_inputs
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


def test_sampler_modes():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))

    def draws(n, **settings):
        merged = dict(dict(temperature=1.0, top_k=0, top_p=1.0), **settings)
        batch = np.repeat(logits, n, axis=0)  # n rows, n seeds: n independent draws
        return ops.convert_to_numpy(sample_tokens(batch, merged["temperature"], merged["top_k"], merged["top_p"],
                                                  np.arange(n, dtype=np.int32), 3))

    assert set(draws(300, top_k=2)) == {0, 1}
    assert set(draws(300, top_p=0.7)) == {0, 1}
    assert set(draws(300, temperature=0.0)) == {0}
    np.testing.assert_allclose(np.bincount(draws(4000), minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    # Settings per row: a greedy row, a top-1 row and a free row in one call.
    mixed = sample_tokens(np.repeat(logits, 3, axis=0), np.array([0.0, 1.0, 1.0], np.float32),
                          np.array([0, 1, 0], np.int32), 1.0, np.array([1, 2, 3], np.int32), 0)
    assert ops.convert_to_numpy(mixed)[:2].tolist() == [0, 0]


def test_sampler_thresholds_match_a_sorted_reference():
    """The sort-free top-k / top-p keep exactly the tokens a sort-based cut keeps (no ties here)."""
    import math

    from kerasllm.generation import sampling

    rng = np.random.default_rng(0)
    for _ in range(40):
        vocab = int(rng.integers(2, 300))
        scaled = (rng.normal(size=(4, vocab)) * rng.uniform(0.1, 5)).astype("float32")
        k = rng.integers(1, vocab + 1, 4).astype("int32")
        top_p = np.array([1.0, *rng.uniform(0.05, 0.99, 3)], "float32")
        keys = sampling._order_keys(scaled)
        kth = ops.convert_to_numpy(sampling._kth_largest(keys, k))
        np.testing.assert_array_equal(kth, [np.sort(row)[::-1][n - 1] for row, n in zip(ops.convert_to_numpy(keys), k)])
        probs = ops.convert_to_numpy(ops.softmax(ops.where(keys >= kth[:, None], scaled, -math.inf), axis=-1))
        floor = ops.convert_to_numpy(sampling._nucleus_floor(sampling._order_keys(probs), probs, top_p))
        for row, p, cut in zip(probs, top_p, floor):
            order = np.argsort(-row, kind="stable")
            expected = np.zeros(vocab, bool)
            expected[order] = (np.cumsum(row[order]) - row[order] < p) | (p >= 1)
            kept = ops.convert_to_numpy(sampling._order_keys(row)) >= cut
            np.testing.assert_array_equal(kept | (row == 0), expected | (row == 0))


def test_draws_are_keyed_by_row_seed_and_position():
    logits = np.zeros((4, 50), np.float32)  # uniform: the draw alone picks the token
    a = ops.convert_to_numpy(sample_tokens(logits, 1.0, 0, 1.0, np.array([5, 6, 7, 8], np.int32), 9))
    b = ops.convert_to_numpy(sample_tokens(logits[:2], 1.0, 0, 1.0, np.array([7, 8], np.int32), 9))
    np.testing.assert_array_equal(a[2:], b)  # independent of the other rows
    c = ops.convert_to_numpy(sample_tokens(logits, 1.0, 0, 1.0, np.array([5, 6, 7, 8], np.int32), 10))
    assert (a != c).any()  # another position, other draws


@pytest.mark.parametrize("argument, value", [
    ("temperature", float("nan")), ("temperature", -1.0), ("top_k", -3), ("top_k", 1.5),
    ("top_p", 0.0), ("top_p", 1.5), ("max_new_tokens", -1), ("seed", 1.5),
])
def test_bad_sampler_arguments_name_the_argument(gpt, argument, value):
    with pytest.raises(ValueError, match=argument):
        Generator(gpt).generate([[1, 2]], **dict({"max_new_tokens": 3}, **{argument: value}))
    with pytest.raises(ValueError, match=argument):
        Generator(gpt).stream([[1, 2]], **dict({"max_new_tokens": 3}, **{argument: value}))


def test_ragged_batch_rows_equal_single_rows(gpt):
    generator = Generator(gpt)
    batch = generator.generate([[1, 2, 3, 4, 5, 6], [7, 8]], 6, temperature=0)
    assert [len(row) for row in batch] == [12, 8]
    for row, prompt in zip(batch, [[1, 2, 3, 4, 5, 6], [7, 8]]):
        np.testing.assert_array_equal(row, generator.generate([prompt], 6, temperature=0)[0])


@pytest.mark.parametrize("arch", ["gpt", "rope_gqa", "lstm"])
def test_each_row_of_a_ragged_batch_starts_after_its_own_prompt(arch):
    """Compiled, sampled: a ragged row equals that row alone, and the call takes max_new_tokens steps."""
    import keras

    keras.utils.set_random_seed(4)
    model = {"gpt": lambda: GPT(vocab_size=31, block_size=48, n_layer=2, n_head=2, n_embd=16),
             "rope_gqa": lambda: GPT(vocab_size=31, block_size=48, n_layer=1, n_head=4, n_kv_head=2, n_embd=16,
                                     positions="rope", norm="rmsnorm", mlp="swiglu"),
             "lstm": lambda: LSTMLanguageModel(vocab_size=31, block_size=16, n_layer=1, n_embd=16)}[arch]()
    model.build((None, None))
    generator = Generator(model)
    prompts = [list(range(1, 21)), [7], [3, 9, 4, 4, 2]]  # 1 to 20 tokens: a spread over a prefill chunk
    batch = generator.generate(prompts, 10, temperature=[0.9, 0.0, 1.3], top_k=[6, 0, 0], top_p=[1.0, 1.0, 0.9],
                               seed=21)
    for i, prompt in enumerate(prompts):
        alone = generator.generate([prompt], 10, temperature=[0.9, 0.0, 1.3][i], top_k=[6, 0, 0][i],
                                   top_p=[1.0, 1.0, 0.9][i], seed=21 + i)[0]
        np.testing.assert_array_equal(batch[i], alone)

    steps = []  # the loop's steps, counted by the model's one-token calls
    call = model.call_with_cache

    def counting(token_ids, *args, **kwargs):
        if token_ids.shape[1] == 1:
            steps.append(1)
        return call(token_ids, *args, **kwargs)

    model.call_with_cache = counting
    buffer = np.zeros((3, 32), np.int32)
    for i, prompt in enumerate(prompts):
        buffer[i, : len(prompt)] = prompt
    try:  # eagerly: the loop body runs once per step
        out = loop.decode(model, buffer, np.array([20, 1, 5], np.int32), 10, sampling_inputs(3, temperature=0),
                          np.zeros([0], np.int32))
    finally:
        del model.call_with_cache
    assert len(steps) == 10  # not 10 + 20 - 1 from the shortest prompt
    assert ops.convert_to_numpy(out)[1, :11].tolist() == batch[1].tolist()


def test_compiled_loop_is_reused_across_calls_and_settings(gpt):
    generator = Generator(gpt)
    a = generator.generate([[1, 2]], 8, temperature=1.0, top_p=0.9, seed=5)
    b = generator.generate([[1, 2]], 8, temperature=1.0, top_p=0.9, seed=5)
    np.testing.assert_array_equal(a, b)
    assert generator._decode.experimental_get_tracing_count() == 1
    c = generator.generate([[3, 4, 5]], 9, temperature=0.7, top_k=4, top_p=1.0, seed=6)
    generator.generate([[3, 4]], 2, temperature=0.0)
    assert generator._decode.experimental_get_tracing_count() == 1  # same batch and bucket
    assert c.shape == (1, 12)


@pytest.mark.slow  # keras-hub's beam search compiles per beam count and buffer: ~15 s
def test_beam_search_scores_at_least_greedy(gpt):
    generator = Generator(gpt)
    prompt = [[4, 5, 6]]

    def log_likelihood(ids):
        logits = np.asarray(gpt(np.asarray(ids, "int32")[None]))[0]
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        return sum(logp[t - 1, ids[t]] for t in range(3, len(ids)))

    greedy = generator.generate(prompt, 6, temperature=0)[0]
    beam = generator.generate(prompt, 6, num_beams=4)[0]
    assert log_likelihood(beam) >= log_likelihood(greedy) - 1e-4


def test_stop_ids_end_generation(gpt):
    generator = Generator(gpt)
    greedy = generator.generate([[1, 2, 3]], 10, temperature=0)[0]
    stop = int(greedy[5])
    stopped = generator.generate([[1, 2, 3]], 10, temperature=0, stop_ids=[stop])[0]
    assert stopped[-1] == stop and len(stopped) <= 6
    streamed = np.concatenate(list(generator.stream([[1, 2, 3]], 10, temperature=0, stop_ids=[stop])))
    np.testing.assert_array_equal(streamed, stopped[3:])


def _generated_log_likelihood(model, ids, prompt_length):
    logits = np.asarray(model(np.asarray(ids, "int32")[None]), np.float64)[0]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return sum(logp[t - 1, ids[t]] for t in range(prompt_length, len(ids)))


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_scores_are_length_penalized_log_likelihoods(gpt, length_penalty):
    """Scores = log p(generated) / n_generated ** penalty, best first; beams end at stop ids."""
    generator = Generator(gpt)
    stops = tuple(range(1, 11))  # a third of the vocabulary: beams end at different lengths
    sequences, scores = generator.beam_search(
        [[14, 15, 16], [17]], max_new_tokens=6, num_beams=3, length_penalty=length_penalty, stop_ids=stops
    )
    assert scores.shape == (2, 3)
    for row, n in zip(range(2), (3, 1)):
        assert np.all(np.diff(scores[row]) <= 1e-9)
        for beam, score in zip(sequences[row], scores[row]):
            new = beam[n:]
            assert 1 <= len(new) <= 6
            assert not np.isin(new[:-1], stops).any()
            assert len(new) == 6 or new[-1] in stops
            expected = _generated_log_likelihood(gpt, beam, n) / len(new) ** length_penalty
            np.testing.assert_allclose(score, expected, atol=1e-4)


@pytest.mark.slow  # keras-hub's beam search compiles per beam count and buffer: ~15 s
def test_beam_search_with_ragged_prompts_equals_one_row_at_a_time(gpt):
    """A longer row's prompt tokens are forced and unscored while shorter rows already search."""
    generator = Generator(gpt)
    both, both_scores = generator.beam_search([[4, 5, 6, 7], [8]], max_new_tokens=5, num_beams=3)
    for row, prompt in enumerate([[4, 5, 6, 7], [8]]):
        alone, alone_scores = generator.beam_search([prompt], max_new_tokens=5, num_beams=3)
        for a, b in zip(both[row], alone[0]):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(both_scores[row], alone_scores[0], atol=1e-5)


def test_bad_beam_arguments(gpt):
    generator = Generator(gpt)
    with pytest.raises(ValueError, match="num_beams=1"):
        generator.beam_search([[1]], 4, num_beams=1)
    with pytest.raises(ValueError, match="block_size"):
        generator.beam_search([[1, 2]], 40, num_beams=2)


def test_stop_strings_cut_the_text():
    from kerasllm.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.train(["abcdefgh ij\n"])
    model = GPT(vocab_size=tokenizer.vocabulary_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    generator = Generator(model, tokenizer)
    full = generator.generate("ab", 20, temperature=1.0, seed=3)
    new = full[2:]
    stop = new[4:6]  # a two-character stop string that occurs in this sample
    cut = generator.generate("ab", 20, temperature=1.0, seed=3, stop=[stop, "never"])
    assert cut == "ab" + new[: new.index(stop)]
    one = new[4]  # a one-token stop string also ends the compiled loop early (as a stop id)
    assert generator.generate("ab", 20, temperature=1.0, seed=3, stop=[one]) == "ab" + new[: new.index(one)]
    with pytest.raises(ValueError, match="string prompt"):
        generator.generate([[1, 2]], 5, stop=["x"])
