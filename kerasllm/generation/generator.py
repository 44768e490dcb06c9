"""Text generation with a key/value cache (GPT) or recurrent state (LSTM).

Two paths share one model interface:

* `generate()` runs the whole decoding loop compiled (XLA on TensorFlow) with a keras-hub
  sampler: the prompt is run once to fill the cache (prefill), then one token per loop step
  against the cache. The loop is compiled once per (sampler settings, batch size, buffer
  length) — buffer lengths are rounded up to a multiple of 64 — and reused across calls.
* `stream()` drives the same cached steps from Python and yields tokens as they come (for the
  CLI and notebooks), and slides the window when a GPT's context is exhausted.

Prompts in a batch may have different lengths: rows are right-padded and, as keras-hub does,
each row's remaining prompt tokens are forced while the shorter rows already sample.
"""

import keras
import keras_hub
import numpy as np
from keras import ops

from kerasllm.generation.sampling import sample_next
from kerasllm.generation.stopping import StopStrings
from kerasllm.models import GPT, LSTMLanguageModel

BUCKET = 64


def _compile(fn, jit_compile):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=jit_compile, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(fn) if jit_compile else fn
    return fn


def make_sampler(temperature=1.0, top_k=0, top_p=1.0, num_beams=1, seed=None):
    """The keras-hub sampler for these settings (greedy when `temperature == 0`)."""
    if num_beams > 1:
        return keras_hub.samplers.BeamSampler(num_beams=num_beams, return_all_beams=True)
    if temperature <= 0:
        return keras_hub.samplers.GreedySampler()
    if top_p < 1.0:
        return keras_hub.samplers.TopPSampler(p=top_p, k=top_k or None, seed=seed, temperature=temperature)
    if top_k > 0:
        return keras_hub.samplers.TopKSampler(k=top_k, seed=seed, temperature=temperature)
    return keras_hub.samplers.RandomSampler(seed=seed, temperature=temperature)


def _beam_next(next_fn, lengths, ends, stop_ids):
    """Makes keras-hub's beam search score only the tokens a beam generates.

    A row's remaining prompt tokens, the tokens past a row's own length (in a ragged batch the
    loop runs to the longest row's end) and, once a beam has produced a stop id, every later
    token get log-probability 0: the prompt is not scored and a finished beam keeps the score of
    its finished sequence (instead of being extended and outranked by its own continuation).

    Args:
        next_fn: the sampler's `next(prompt, cache, index)`.
        lengths: `(batch * beams,)` prompt length of each beam's row.
        ends: `(batch * beams,)` prompt length + new tokens of each beam's row.
        stop_ids: tuple of stop ids or None.
    """

    def only(token, vocab):  # logits putting all probability on `token`
        return ops.where(ops.arange(vocab)[None, :] == token[:, None], 0.0, -1e9)

    def wrapped(prompt, cache, index):
        logits, hidden, cache = next_fn(prompt, cache, index)  # logits (B * beams, V)
        vocab = ops.shape(logits)[-1]
        forced = ops.take(prompt, ops.reshape(index, (1,)), axis=1)[:, 0]  # (B * beams,)
        logits = ops.where((index < lengths)[:, None], only(forced, vocab), logits)
        logits = ops.where((index >= ends)[:, None], only(ops.zeros_like(forced), vocab), logits)
        if stop_ids is not None:
            positions = ops.arange(ops.shape(prompt)[1])[None, :]
            generated = (positions >= lengths[:, None]) & (positions < index)
            is_stop = ops.any(ops.stack([prompt == i for i in stop_ids]), axis=0)
            finished = ops.any(generated & is_stop, axis=1)  # (B * beams,)
            stop = ops.full(ops.shape(finished), stop_ids[0], dtype=prompt.dtype)
            logits = ops.where(finished[:, None], only(stop, vocab), logits)
        return logits, hidden, cache

    return wrapped


class _LoopLimit:
    """Ends a keras-hub sampler's decoding loop at a traced index instead of the buffer's end.

    Buffers are padded to a multiple of `BUCKET` so that one compiled loop serves many lengths;
    without a limit the loop would also decode the padding (63 wasted steps for one new token).
    """

    def __init__(self, sampler):
        self.limit = None  # set by the compiled loop while tracing: its `stop_at` input
        run_loop = sampler.run_loop

        def bounded(cond, body, model=None, loop_vars=None, maximum_iterations=None):
            limit = self.limit

            def cond_fn(*state):  # state[2] is the index for every keras-hub sampler
                return ops.logical_and(cond(*state), state[2] < limit)

            return run_loop(cond_fn, body, model=model, loop_vars=loop_vars, maximum_iterations=maximum_iterations)

        sampler.run_loop = bounded


class Generator:
    """Generates continuations from a trained `GPT` or `LSTMLanguageModel`.

    Args:
        model: the language model.
        tokenizer: optional; enables string prompts and string results.
        jit_compile: XLA-compile the decoding loop and steps.

    Examples:

    >>> from kerasllm.models import GPT
    >>> model = GPT(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)
    >>> generator = Generator(model)
    >>> generator.generate([[1, 2, 3]], max_new_tokens=5, temperature=0).shape
    (1, 8)
    >>> generator.generate([[1, 2, 3], [4]], max_new_tokens=2, temperature=0)[1].shape
    (3,)
    """

    def __init__(self, model, tokenizer=None, jit_compile=True):
        if not isinstance(model, (GPT, LSTMLanguageModel)):
            raise TypeError(f"Generator needs a GPT or LSTMLanguageModel, got {type(model).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.jit_compile = jit_compile
        self.is_gpt = isinstance(model, GPT)
        self.context = model.block_size
        self._loops = {}  # sampler settings -> (sampler, compiled loop, initial seed state)
        if self.is_gpt:
            self._prefill = _compile(self._gpt_prefill, jit_compile)
            self._step = _compile(self._gpt_step, jit_compile)
            self._full = _compile(self._gpt_full, jit_compile)
        else:
            self._prefill = _compile(self._lstm_prefill, False)  # variable prompt lengths
            self._step = _compile(self._lstm_step, jit_compile)

    # --- model steps ---------------------------------------------------------------------
    def _gpt_prefill(self, ids, lengths):
        # ids: (B, S) right-padded to the cache length. Padding writes cache slots beyond each
        # prompt, but every slot is rewritten by a decode step before it is attended to.
        cache = self.model.init_cache(ops.shape(ids)[0], ops.shape(ids)[1])
        logits, cache = self.model.call_with_cache(ids, cache, 0)
        last = ops.take_along_axis(logits, ops.reshape(lengths - 1, (-1, 1, 1)), axis=1)
        return last[:, 0], cache  # (B, V), cache

    def _gpt_step(self, token, cache, index):
        logits, cache = self.model.call_with_cache(token[:, None], cache, index)
        return logits[:, 0], cache

    def _gpt_full(self, ids, lengths):
        logits = self.model(ids)  # (B, S, V); causal, so right padding never leaks backwards
        last = ops.take_along_axis(logits, ops.reshape(lengths - 1, (-1, 1, 1)), axis=1)
        return last[:, 0]

    def _lstm_prefill(self, ids):
        state = self.model.init_state(ops.shape(ids)[0])
        logits, state = self.model.call_with_state(ids, state)
        return logits[:, -1], state

    def _lstm_step(self, token, state):
        logits, state = self.model.call_with_state(token[:, None], state)
        return logits[:, 0], state

    # --- the compiled loop ----------------------------------------------------------------
    def _loop_fn(self, sampler, limit):
        model = self.model

        def run(buffer, mask, start, stop_at, stop_ids):
            limit.limit = stop_at
            batch = ops.shape(buffer)[0]
            if self.is_gpt:
                cache = model.init_cache(batch, ops.shape(buffer)[1])
                _, cache = model.call_with_cache(buffer, cache, 0)  # prefill every slot

                def next_fn(prompt, cache, index):
                    token = ops.take(prompt, ops.reshape(index - 1, (1,)), axis=1)  # (B, 1)
                    logits, cache = model.call_with_cache(token, cache, index - 1)
                    return logits[:, 0], None, cache
            else:
                cache = model.init_state(batch)

                def next_fn(prompt, cache, index):
                    token = ops.take(prompt, ops.reshape(index - 1, (1,)), axis=1)
                    logits, cache = model.call_with_state(token, cache)
                    return logits[:, 0], None, cache

            if isinstance(sampler, keras_hub.samplers.BeamSampler):
                lengths = ops.sum(ops.cast(mask, "int32"), axis=1)  # (B,) prompt lengths
                ends = lengths + stop_at - ops.max(lengths)  # each row's prompt + new tokens
                beams = sampler.num_beams
                next_fn = _beam_next(next_fn, ops.repeat(lengths, beams, axis=0), ops.repeat(ends, beams, axis=0), stop_ids)
            kwargs = {} if stop_ids is None else {"stop_token_ids": stop_ids}
            return sampler(next_fn, buffer, cache=cache, index=start, mask=mask, **kwargs)

        return run

    def _loop(self, temperature, top_k, top_p, num_beams, seed, stop_ids):
        key = (float(temperature), int(top_k), float(top_p), int(num_beams), tuple(stop_ids))
        if key not in self._loops:
            sampler = make_sampler(temperature, top_k, top_p, num_beams, seed=seed)
            limit = _LoopLimit(sampler)
            stops = tuple(stop_ids) or None
            generator = getattr(sampler, "seed_generator", None)

            def run(buffer, mask, start, stop_at, seed_state):
                if generator is None:
                    return self._loop_fn(sampler, limit)(buffer, mask, start, stop_at, stops)
                # The RNG state is an input, not a captured constant: under jax.jit a captured
                # state would freeze the samples; as an input, equal seeds repeat and others differ.
                with keras.StatelessScope(state_mapping=[(generator.state, seed_state)]):
                    return self._loop_fn(sampler, limit)(buffer, mask, start, stop_at, stops)

            initial = None if generator is None else np.asarray(generator.state.value)
            self._loops[key] = (sampler, _compile(run, self.jit_compile), initial)
        sampler, fn, initial = self._loops[key]
        if initial is None:
            return lambda buffer, mask, start, stop_at: fn(buffer, mask, start, stop_at, np.zeros(2, np.uint32))
        state = initial.copy()
        state[0] = seed if seed is not None else np.random.randint(0, 2**31 - 1)
        state[1] = 0
        return lambda buffer, mask, start, stop_at: fn(buffer, mask, start, stop_at, state)

    # --- public API ----------------------------------------------------------------------
    def _prompt_rows(self, prompt):
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a string prompt needs a tokenizer")
            prompt = [self.tokenizer.encode(prompt)]
        rows = [np.asarray(p, dtype=np.int32).reshape(-1) for p in prompt]
        start_id = self.tokenizer.eos_id if self.tokenizer is not None else 0
        return [r if len(r) else np.array([start_id], np.int32) for r in rows]

    def generate(self, prompt, max_new_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=None,
                 num_beams=1, length_penalty=1.0, stop_ids=(), stop=(), use_cache=True):
        """Generates `max_new_tokens` after each prompt.

        Args:
            prompt: a string (needs a tokenizer) or a batch of id sequences (lengths may differ).
            max_new_tokens: new tokens per row.
            temperature: 0 is greedy; otherwise the softmax temperature.
            top_k: sample among the k likeliest tokens (0: all).
            top_p: nucleus sampling mass (1: off).
            seed: seed of the sampler; equal seeds give equal samples.
            num_beams: beam search with this many beams when > 1 (deterministic); returns the
                best beam of `beam_search`.
            length_penalty: beam search only, see `beam_search`.
            stop_ids: stop once every row has produced one of these ids (kept in the output).
            stop: stop strings (string prompts): the returned text ends before the first one.
            use_cache: False runs the full forward pass for every token (reference path).

        Returns:
            A string for a string prompt; otherwise an int32 array `(batch, time)` when all
            rows have one length, or a list of 1-D arrays.
        """
        if stop and not isinstance(prompt, str):
            raise ValueError("stop strings need a string prompt (and a tokenizer); use stop_ids for id prompts")
        stopper = StopStrings(stop)
        stop_ids = tuple(stop_ids) + self.single_token_stops(stopper.stops)
        rows = self._prompt_rows(prompt)
        if num_beams > 1:
            beams, _ = self.beam_search(rows, max_new_tokens, num_beams, length_penalty, stop_ids)
            outs = [row_beams[0] for row_beams in beams]
        else:
            outs = self._generate(rows, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, use_cache)
        if isinstance(prompt, str):
            text = self.tokenizer.decode(outs[0])
            if not stopper.stops:
                return text
            head = self.tokenizer.decode(rows[0])
            return head + stopper.cut(text[len(head):]) if text.startswith(head) else stopper.cut(text)
        if len({len(o) for o in outs}) == 1:
            return np.stack(outs)
        return outs

    def beam_search(self, prompt, max_new_tokens=100, num_beams=4, length_penalty=1.0, stop_ids=()):
        """Beam search; returns every beam with its length-penalized score, best first.

        The search is keras-hub's `BeamSampler` in the compiled loop; only generated tokens are
        scored, and a beam that produced a stop id keeps the score of its finished sequence.
        Beams are then ranked by `log p(generated tokens) / n_generated ** length_penalty`
        (`n_generated` counts up to and including the stop id): 0 ranks by total
        log-probability, which favours short beams; 1 by the per-token average.

        Args:
            prompt: a batch of id sequences (lengths may differ).
            max_new_tokens: new tokens per row.
            num_beams: beams kept at every step.
            length_penalty: exponent of the length normalization.
            stop_ids: a beam ends at the first of these ids.

        Returns:
            `(sequences, scores)`: `sequences[i]` is a list of `num_beams` 1-D int32 arrays
            (prompt + generated, cut after a stop id), best first; `scores` is a float array
            `(batch, num_beams)` in the same order.

        Examples:

        >>> from kerasllm.models import GPT
        >>> generator = Generator(GPT(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16))
        >>> sequences, scores = generator.beam_search([[1, 2, 3]], max_new_tokens=4, num_beams=3)
        >>> len(sequences[0]), sequences[0][0].shape, bool(scores[0, 0] >= scores[0, 1])
        (3, (7,), True)
        """
        if num_beams < 2:
            raise ValueError(f"num_beams={num_beams}: beam search needs 2 or more beams")
        rows = self._prompt_rows(prompt)
        lengths = np.array([len(r) for r in rows])
        if self.is_gpt and int(lengths.max()) + max_new_tokens > self.context:
            raise ValueError(f"beam search needs prompt + max_new_tokens <= block_size ({self.context})")
        beams, log_probs = self._run_loop(rows, max_new_tokens, 0.0, 0, 1.0, None, num_beams, tuple(stop_ids))
        beams, log_probs = np.asarray(beams), np.asarray(log_probs, np.float64)  # (B, beams, L), (B, beams)
        sequences, scores = [], np.zeros_like(log_probs)
        for i, n in enumerate(lengths):
            cut = [_cut_after_stop(b[: n + max_new_tokens], n, stop_ids) for b in beams[i]]
            generated = np.array([max(len(c) - n, 1) for c in cut], np.float64)
            row_scores = log_probs[i] / generated**length_penalty
            order = np.argsort(-row_scores, kind="stable")
            sequences.append([cut[j] for j in order])
            scores[i] = row_scores[order]
        return sequences, scores

    def single_token_stops(self, stops):
        """The ids of stop strings that are one token (they can end the loop itself)."""
        if not stops:
            return ()
        if self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        ids = [self.tokenizer.encode(s) for s in stops]
        return tuple(int(i[0]) for i, s in zip(ids, stops) if len(i) == 1 and self.tokenizer.decode(i) == s)

    def _run_loop(self, rows, max_new_tokens, temperature, top_k, top_p, seed, num_beams, stop_ids):
        lengths = np.array([len(r) for r in rows])
        total = int(lengths.max()) + max_new_tokens
        length = total if not self.is_gpt else min(-(-total // BUCKET) * BUCKET, self.context)
        buffer = np.zeros((len(rows), length), np.int32)
        mask = np.zeros((len(rows), length), bool)
        for i, row in enumerate(rows):
            buffer[i, : len(row)] = row
            mask[i, : len(row)] = True
        start = int(lengths.min()) if self.is_gpt else 1
        fn = self._loop(temperature, top_k, top_p, num_beams, seed, stop_ids)
        return fn(buffer, mask, np.int32(start), np.int32(total))

    def _generate(self, rows, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, use_cache):
        lengths = np.array([len(r) for r in rows])
        fits = not self.is_gpt or int(lengths.max()) + max_new_tokens <= self.context
        if not use_cache or not fits:
            outs = []
            for row in rows:  # the Python-driven path handles one length per call
                new = list(self.stream([row], max_new_tokens, temperature, top_k, top_p, seed, use_cache, stop_ids))
                outs.append(np.concatenate([row, np.concatenate(new)]) if new else row)
            return outs
        result = np.asarray(self._run_loop(rows, max_new_tokens, temperature, top_k, top_p, seed, 1, stop_ids))
        outs = [result[i, : lengths[i] + max_new_tokens] for i in range(len(rows))]
        if stop_ids:
            outs = [_cut_after_stop(o, n, stop_ids) for o, n in zip(outs, lengths)]
        return outs

    def stream(self, prompt, max_new_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=None,
               use_cache=True, stop_ids=()):
        """Yields `(batch,)` arrays of new token ids, one step at a time (equal-length prompts)."""
        rows = self._prompt_rows(prompt)
        if len({len(r) for r in rows}) != 1:
            raise ValueError("stream() needs prompts of one length; use generate() for ragged batches")
        ids = np.stack(rows)
        rng = np.random.default_rng(seed)
        batch = ids.shape[0]

        def pick(logits):
            return sample_next(np.asarray(logits), rng, temperature, top_k, top_p)

        def done(token):
            return stop_ids and np.isin(token, list(stop_ids)).all()

        if not self.is_gpt:
            logits, state = self._prefill(ids)
            for _ in range(max_new_tokens):
                token = pick(logits)
                yield token
                if done(token):
                    return
                logits, state = self._step(ops.convert_to_tensor(token), state)
            return
        history = ids
        S = self.context
        if not use_cache:
            for _ in range(max_new_tokens):
                window = history[:, -S:]
                padded = np.zeros((batch, S), np.int32)
                padded[:, : window.shape[1]] = window
                token = pick(self._full(padded, np.full((batch,), window.shape[1], np.int32)))
                yield token
                if done(token):
                    return
                history = np.concatenate([history, token[:, None]], axis=1)
            return
        produced = 0
        while produced < max_new_tokens:
            # Past the context, the window restarts from the newest half-context of tokens.
            window = history[:, -S:] if history.shape[1] <= S else history[:, -(S // 2):]
            length = window.shape[1]
            padded = np.zeros((batch, S), np.int32)
            padded[:, :length] = window
            logits, cache = self._prefill(padded, np.full((batch,), length, np.int32))
            index = length
            while produced < max_new_tokens:
                token = pick(logits)
                produced += 1
                yield token
                if done(token):
                    return
                history = np.concatenate([history, token[:, None]], axis=1)
                if index >= S:
                    break  # cache full: refill from the newest tokens
                logits, cache = self._step(ops.convert_to_tensor(token), cache, ops.convert_to_tensor(index, "int32"))
                index += 1


def _cut_after_stop(ids, prompt_length, stop_ids):
    new = ids[prompt_length:]
    hits = np.flatnonzero(np.isin(new, list(stop_ids)))
    return ids if not len(hits) else ids[: prompt_length + hits[0] + 1]
