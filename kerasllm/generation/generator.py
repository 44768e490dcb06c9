"""Text generation from a model with the cached-decoding interface (`GPT`, `LSTMLanguageModel`).

* `generate()` runs the decoding loop of `kerasllm.generation.loop` compiled (XLA on
  TensorFlow, `jax.jit` on JAX): the prompts fill the cache at once (prefill), then one token
  per loop step. It is compiled once per (batch size, buffer length) — buffer lengths are
  rounded up to a multiple of 64, and the loop stops at prompt + max_new_tokens, not at the
  buffer's end — and reused across calls; the sampler settings are inputs, not constants.
* `stream()` calls the same compiled prefill and step from Python and yields tokens as they
  come (for the CLI and notebooks); it slides the window when a GPT's context is exhausted.
* `beam_search()` is keras-hub's `BeamSampler` over the same cache.

Sampling is `kerasllm.generation.sampling.sample_tokens`, whose random draws are keyed by each
row's (seed, position): row `i` of a batch gets exactly the tokens it gets alone with its seed
(`seed + i` for an int seed), on every path, the SavedModel export's included.
"""

import functools

import keras
import keras_hub
import numpy as np
from keras import ops

from kerasllm.generation import loop
from kerasllm.generation.sampling import sample_tokens, sampling_inputs
from kerasllm.generation.stopping import StopStrings

BUCKET = 64
DECODING_INTERFACE = ("init_cache", "call_with_cache", "context_length")


def _compile(fn, jit_compile):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=jit_compile, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(fn) if jit_compile else fn
    return fn


def _count(name, value, minimum=0):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")
    return int(value)


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


class Generator:
    """Generates continuations from a trained `GPT` or `LSTMLanguageModel`.

    Any model with keras-hub's cached-decoding interface works: `init_cache(batch_size,
    max_length)`, `call_with_cache(token_ids, cache, cache_index, padding_mask=None,
    offsets=None)` (`offsets`: where each left-padded row begins, see `loop.decode`) and a
    `context_length` property (None: no limit).

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
    >>> a = generator.generate([[1, 2], [3, 4]], 4, temperature=0.8, top_k=5, seed=7)
    >>> b = generator.generate([[3, 4]], 4, temperature=0.8, top_k=5, seed=8)  # row 1: seed + 1
    >>> bool((a[1] == b[0]).all())
    True
    """

    def __init__(self, model, tokenizer=None, jit_compile=True):
        missing = [name for name in DECODING_INTERFACE if not hasattr(model, name)]
        if missing:
            raise TypeError(f"Generator needs a model with {', '.join(DECODING_INTERFACE)} "
                            f"(a GPT or LSTMLanguageModel); {type(model).__name__} lacks {', '.join(missing)}")
        self.model = model
        self.tokenizer = tokenizer
        self.jit_compile = jit_compile
        self.context = model.context_length  # None: no limit
        self._decode = _compile(functools.partial(loop.decode, model), jit_compile)
        self._packs = hasattr(model, "prefill_packed")  # a GPT: ragged batches prefill packed
        self._prefill = _compile(functools.partial(loop.prefill, model), jit_compile)
        self._advance = _compile(functools.partial(loop.advance, model), jit_compile)
        self._full = _compile(functools.partial(loop.last_logits, model), jit_compile)
        self._sample = _compile(sample_tokens, jit_compile)
        self._beam_loops = {}  # (num_beams, stop ids) -> compiled keras-hub beam search

    def _prompt_rows(self, prompt):
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a string prompt needs a tokenizer")
            prompt = [self.tokenizer.encode(prompt)]
        rows = [np.asarray(p, dtype=np.int32).reshape(-1) for p in prompt]
        if not rows:
            raise ValueError("prompt: an empty batch (expected one or more prompts)")
        start_id = self.tokenizer.eos_id if self.tokenizer is not None else 0
        return [r if len(r) else np.array([start_id], np.int32) for r in rows]

    # --- public API ----------------------------------------------------------------------
    def generate(self, prompt, max_new_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=None,
                 num_beams=1, length_penalty=1.0, stop_ids=(), stop=(), use_cache=True):
        """Generates `max_new_tokens` after each prompt.

        Args:
            prompt: a string (needs a tokenizer) or a batch of id sequences (lengths may differ).
            max_new_tokens: new tokens per row.
            temperature: 0 is greedy; otherwise the softmax temperature. A number or one per row
                (as are `top_k` and `top_p`).
            top_k: sample among the k likeliest tokens (0: all).
            top_p: nucleus sampling mass (1: off).
            seed: an int (row `i` uses `seed + i`), one int per row, or None (a fresh random
                seed). A row's tokens depend only on its prompt, settings and seed.
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
        max_new_tokens = _count("max_new_tokens", max_new_tokens)
        num_beams = _count("num_beams", num_beams, minimum=1)
        stopper = StopStrings(stop)
        stop_ids = tuple(stop_ids) + self.single_token_stops(stopper.stops)
        rows = self._prompt_rows(prompt)
        if num_beams > 1:
            beams, _ = self.beam_search(rows, max_new_tokens, num_beams, length_penalty, stop_ids)
            outs = [row_beams[0] for row_beams in beams]
        else:
            sampling = sampling_inputs(len(rows), temperature, top_k, top_p, seed)
            outs = self._generate(rows, max_new_tokens, sampling, stop_ids, use_cache)
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

        The search is keras-hub's `BeamSampler` over the model's cache, compiled with a buffer of
        exactly prompt + max_new_tokens (so its loop ends there); only generated tokens are
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
        max_new_tokens = _count("max_new_tokens", max_new_tokens)
        if num_beams < 2:
            raise ValueError(f"num_beams={num_beams}: beam search needs 2 or more beams")
        rows = self._prompt_rows(prompt)
        lengths = np.array([len(r) for r in rows])
        total = int(lengths.max()) + max_new_tokens
        if self.context is not None and total > self.context:
            raise ValueError(f"beam search needs prompt + max_new_tokens <= block_size ({self.context})")
        run = self._beam_loop(num_beams, tuple(int(i) for i in stop_ids))
        # keras-hub's sampler reads a stop id anywhere past the prompt as a finished beam: the
        # positions still to generate must hold another id (a stop id 0 is common: <|endoftext|>).
        fill = next(i for i in range(len(stop_ids) + 1) if i not in stop_ids)
        buffer, mask = _right_padded(rows, total, fill)
        beams, log_probs = run(buffer, mask, lengths.astype(np.int32), (lengths + max_new_tokens).astype(np.int32))
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

    def _beam_loop(self, num_beams, stop_ids):
        key = (num_beams, stop_ids)
        if key not in self._beam_loops:
            sampler = keras_hub.samplers.BeamSampler(num_beams=num_beams, return_all_beams=True)
            model = self.model
            stops = stop_ids or None

            def run(buffer, mask, lengths, ends):
                # keras-hub's step at `index` feeds token `index - 1`: the cache holds one less.
                start = ops.min(lengths)
                _, cache = loop.prefill(model, buffer, start - 1)

                def next_fn(prompt, cache, index):
                    token = ops.take(prompt, ops.reshape(index - 1, (1,)), axis=1)  # (B, 1)
                    logits, cache = model.call_with_cache(token, cache, index - 1)
                    return logits[:, 0], None, cache

                beams = sampler.num_beams
                next_fn = _beam_next(next_fn, ops.repeat(lengths, beams, axis=0), ops.repeat(ends, beams, axis=0), stops)
                kwargs = {} if stops is None else {"stop_token_ids": stops}
                return sampler(next_fn, buffer, cache=cache, index=start, mask=mask, **kwargs)

            self._beam_loops[key] = _compile(run, self.jit_compile)
        return self._beam_loops[key]

    def _buffer_length(self, total):
        """`total` rounded up to the bucket, within the context: one compiled loop per bucket."""
        length = -(-total // BUCKET) * BUCKET
        return length if self.context is None else min(length, self.context)

    def _generate(self, rows, max_new_tokens, sampling, stop_ids, use_cache):
        lengths = np.array([len(r) for r in rows], np.int32)
        total = int(lengths.max()) + max_new_tokens
        if not use_cache or (self.context is not None and total > self.context):
            outs = []
            for i, row in enumerate(rows):  # the Python-driven path handles one length per call
                one = {name: value[i : i + 1] for name, value in sampling.items()}
                new = list(self._stream([row], max_new_tokens, one, stop_ids, use_cache))
                outs.append(np.concatenate([row, np.concatenate(new)]) if new else row)
            return outs
        buffer, _ = _right_padded(rows, self._buffer_length(total))
        packing = loop.pack_prompts(rows, buffer.shape[1]) if self._packs and len(rows) > 1 and max_new_tokens else None
        result = ops.convert_to_numpy(self._decode(
            buffer, lengths, np.asarray(max_new_tokens, np.int32), sampling, np.asarray(stop_ids, np.int32).reshape(-1),
            packing,
        ))
        outs = [result[i, : lengths[i] + max_new_tokens] for i in range(len(rows))]
        if stop_ids:
            outs = [_cut_after_stop(o, n, stop_ids) for o, n in zip(outs, lengths)]
        return outs

    def stream(self, prompt, max_new_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=None,
               use_cache=True, stop_ids=()):
        """Yields `(batch,)` arrays of new token ids, one step at a time (equal-length prompts).

        The tokens are those of `generate` with the same arguments (the same compiled prefill,
        step and sampler); past a GPT's context the cache restarts from the newest
        half-context of tokens. Stops once every row has produced one of `stop_ids`.
        """
        max_new_tokens = _count("max_new_tokens", max_new_tokens)
        rows = self._prompt_rows(prompt)
        if len({len(r) for r in rows}) != 1:
            raise ValueError("stream() needs prompts of one length; use generate() for ragged batches")
        sampling = sampling_inputs(len(rows), temperature, top_k, top_p, seed)
        return self._stream(rows, max_new_tokens, sampling, tuple(stop_ids), use_cache)

    def _stream(self, rows, max_new_tokens, sampling, stop_ids, use_cache):
        history = np.stack(rows)  # (B, T)
        done = np.zeros(len(rows), bool)
        steps = self._cached_steps if use_cache else self._uncached_steps
        for token in steps(history, max_new_tokens, sampling):
            yield token
            done |= np.isin(token, stop_ids)
            if stop_ids and done.all():
                return

    def _cached_steps(self, history, max_new_tokens, sampling):
        remaining = max_new_tokens
        while remaining > 0:
            # A fresh cache holds the history, or past a GPT's context its newest half-context.
            fits = self.context is None or history.shape[1] < self.context
            window = history if fits else history[:, -(self.context // 2):]
            length = self._buffer_length(window.shape[1] + remaining)
            buffer, _ = _right_padded(window, length)
            index = window.shape[1]
            logits, cache = self._prefill(buffer, np.asarray(index, np.int32))
            while remaining > 0 and index < length:
                token, logits, cache = self._advance(
                    logits, cache, np.asarray(index, np.int32), np.asarray(history.shape[1], np.int32), sampling
                )
                token = ops.convert_to_numpy(token)
                yield token
                history = np.concatenate([history, token[:, None]], axis=1)
                remaining -= 1
                index += 1

    def _uncached_steps(self, history, max_new_tokens, sampling):
        # The reference path: a full forward pass over the newest tokens for every new token.
        length = self._buffer_length(history.shape[1] + max_new_tokens)
        for _ in range(max_new_tokens):
            window = history[:, -length:]
            buffer, _ = _right_padded(window, length)
            logits = self._full(buffer, np.full(len(window), window.shape[1], np.int32))
            token = ops.convert_to_numpy(self._sample(
                logits, sampling["temperature"], sampling["top_k"], sampling["top_p"], sampling["seeds"],
                np.asarray(history.shape[1], np.int32),
            ))
            yield token
            history = np.concatenate([history, token[:, None]], axis=1)


def _right_padded(rows, length, fill=0):
    """`(buffer, mask)`: the rows left-aligned in int32 `fill`s `(batch, length)`, and where they are."""
    buffer = np.full((len(rows), length), fill, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        buffer[i, : len(row)] = row
        mask[i, : len(row)] = True
    return buffer, mask


def _cut_after_stop(ids, prompt_length, stop_ids):
    new = ids[prompt_length:]
    hits = np.flatnonzero(np.isin(new, list(stop_ids)))
    return ids if not len(hits) else ids[: prompt_length + hits[0] + 1]
