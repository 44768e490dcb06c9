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
    def _loop_fn(self, sampler):
        model = self.model

        def run(buffer, mask, start, stop_ids):
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

            kwargs = {} if stop_ids is None else {"stop_token_ids": stop_ids}
            return sampler(next_fn, buffer, cache=cache, index=start, mask=mask, **kwargs)

        return run

    def _loop(self, temperature, top_k, top_p, num_beams, seed, stop_ids):
        key = (float(temperature), int(top_k), float(top_p), int(num_beams), tuple(stop_ids))
        if key not in self._loops:
            sampler = make_sampler(temperature, top_k, top_p, num_beams, seed=seed)
            stops = tuple(stop_ids) or None
            generator = getattr(sampler, "seed_generator", None)

            def run(buffer, mask, start, seed_state):
                if generator is None:
                    return self._loop_fn(sampler)(buffer, mask, start, stops)
                # The RNG state is an input, not a captured constant: under jax.jit a captured
                # state would freeze the samples; as an input, equal seeds repeat and others differ.
                with keras.StatelessScope(state_mapping=[(generator.state, seed_state)]):
                    return self._loop_fn(sampler)(buffer, mask, start, stops)

            initial = None if generator is None else np.asarray(generator.state.value)
            self._loops[key] = (sampler, _compile(run, self.jit_compile), initial)
        sampler, fn, initial = self._loops[key]
        if initial is None:
            return lambda buffer, mask, start: fn(buffer, mask, start, np.zeros(2, np.uint32))
        state = initial.copy()
        state[0] = seed if seed is not None else np.random.randint(0, 2**31 - 1)
        state[1] = 0
        return lambda buffer, mask, start: fn(buffer, mask, start, state)

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
                 num_beams=1, stop_ids=(), use_cache=True):
        """Generates `max_new_tokens` after each prompt.

        Args:
            prompt: a string (needs a tokenizer) or a batch of id sequences (lengths may differ).
            max_new_tokens: new tokens per row.
            temperature: 0 is greedy; otherwise the softmax temperature.
            top_k: sample among the k likeliest tokens (0: all).
            top_p: nucleus sampling mass (1: off).
            seed: seed of the sampler; equal seeds give equal samples.
            num_beams: beam search with this many beams when > 1 (deterministic).
            stop_ids: stop once every row has produced one of these ids.
            use_cache: False runs the full forward pass for every token (reference path).

        Returns:
            A string for a string prompt; otherwise an int32 array `(batch, time)` when all
            rows have one length, or a list of 1-D arrays.
        """
        rows = self._prompt_rows(prompt)
        lengths = np.array([len(r) for r in rows])
        total = int(lengths.max()) + max_new_tokens
        fits = not self.is_gpt or total <= self.context
        if not use_cache or not fits:
            if num_beams > 1:
                raise ValueError(f"beam search needs prompt + max_new_tokens <= block_size ({self.context})")
            outs = []
            for row in rows:  # the Python-driven path handles one length per call
                new = list(self.stream([row], max_new_tokens, temperature, top_k, top_p, seed, use_cache, stop_ids))
                outs.append(np.concatenate([row, np.concatenate(new)]) if new else row)
        else:
            length = total if not self.is_gpt else min(-(-total // BUCKET) * BUCKET, self.context)
            buffer = np.zeros((len(rows), length), np.int32)
            mask = np.zeros((len(rows), length), bool)
            for i, row in enumerate(rows):
                buffer[i, : len(row)] = row
                mask[i, : len(row)] = True
            start = int(lengths.min()) if self.is_gpt else 1
            fn = self._loop(temperature, top_k, top_p, num_beams, seed, stop_ids)
            result = fn(buffer, mask, np.int32(start))
            if num_beams > 1:
                beams, _ = result  # (B, beams, L), best first
                result = np.asarray(beams)[:, 0]
            result = np.asarray(result)
            outs = [result[i, : lengths[i] + max_new_tokens] for i in range(len(rows))]
            if stop_ids:
                outs = [_cut_after_stop(o, n, stop_ids) for o, n in zip(outs, lengths)]
        if isinstance(prompt, str):
            return self.tokenizer.decode(outs[0])
        if len({len(o) for o in outs}) == 1:
            return np.stack(outs)
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
