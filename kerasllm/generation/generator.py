"""Text generation with a key/value cache (GPT) or recurrent state (LSTM).

The prompt is run once (prefill), then one token per step against the cache. Both steps are
compiled once per (batch size, cache length) and reused across calls, so a second call with
another prompt does not recompile.
"""

import keras
import numpy as np
from keras import ops

from kerasllm.generation.sampling import sample_next
from kerasllm.models import GPT, LSTMLanguageModel


def _compile(fn, jit_compile):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=jit_compile, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(fn) if jit_compile else fn
    return fn


class Generator:
    """Generates continuations from a trained `GPT` or `LSTMLanguageModel`.

    Args:
        model: the language model.
        tokenizer: optional; enables string prompts and string results.
        jit_compile: XLA-compile the prefill and decode steps.

    Examples:

    >>> from kerasllm.models import GPT
    >>> model = GPT(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)
    >>> ids = Generator(model).generate([[1, 2, 3]], max_new_tokens=5, temperature=0)
    >>> ids.shape
    (1, 8)
    """

    def __init__(self, model, tokenizer=None, jit_compile=True):
        if not isinstance(model, (GPT, LSTMLanguageModel)):
            raise TypeError(f"Generator needs a GPT or LSTMLanguageModel, got {type(model).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.is_gpt = isinstance(model, GPT)
        self.context = model.block_size
        if self.is_gpt:
            self._prefill = _compile(self._gpt_prefill, jit_compile)
            self._step = _compile(self._gpt_step, jit_compile)
            self._full = _compile(self._gpt_full, jit_compile)
        else:
            self._prefill = _compile(self._lstm_prefill, False)  # variable prompt lengths
            self._step = _compile(self._lstm_step, jit_compile)

    # --- compiled pieces -----------------------------------------------------------------
    def _gpt_prefill(self, ids, lengths):
        # ids: (B, S) right-padded to the cache length. Padding writes cache slots beyond each
        # prompt, but every slot is rewritten by the decode step before it is attended to.
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

    # --- public API ----------------------------------------------------------------------
    def _prompt_ids(self, prompt):
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a string prompt needs a tokenizer")
            prompt = [self.tokenizer.encode(prompt)]
        rows = [np.asarray(p, dtype=np.int32).reshape(-1) for p in prompt]
        if len({len(r) for r in rows}) != 1:
            raise ValueError("all prompts in a batch must have the same length")
        ids = np.stack(rows)
        if ids.shape[1] == 0:
            bos = self.tokenizer.eos_id if self.tokenizer is not None else 0
            ids = np.full((len(rows), 1), bos, np.int32)
        return ids

    def stream(self, prompt, max_new_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=None,
               use_cache=True, stop_ids=()):
        """Yields `(batch,)` arrays of new token ids, one step at a time."""
        ids = self._prompt_ids(prompt)
        rng = np.random.default_rng(seed)
        batch = ids.shape[0]
        if not self.is_gpt:
            logits, state = self._prefill(ids)
            for _ in range(max_new_tokens):
                token = sample_next(np.asarray(logits), rng, temperature, top_k, top_p)
                yield token
                if stop_ids and np.isin(token, list(stop_ids)).all():
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
                logits = self._full(padded, np.full((batch,), window.shape[1], np.int32))
                token = sample_next(np.asarray(logits), rng, temperature, top_k, top_p)
                yield token
                if stop_ids and np.isin(token, list(stop_ids)).all():
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
                token = sample_next(np.asarray(logits), rng, temperature, top_k, top_p)
                produced += 1
                yield token
                if stop_ids and np.isin(token, list(stop_ids)).all():
                    return
                history = np.concatenate([history, token[:, None]], axis=1)
                if index >= S:
                    break  # cache full: refill from the newest tokens
                logits, cache = self._step(ops.convert_to_tensor(token), cache, ops.convert_to_tensor(index, "int32"))
                index += 1

    def generate(self, prompt, max_new_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=None,
                 use_cache=True, stop_ids=()):
        """Returns prompt + continuation: an int array `(batch, time)`, or a string for a string prompt."""
        ids = self._prompt_ids(prompt)
        new = list(self.stream(ids, max_new_tokens, temperature, top_k, top_p, seed, use_cache, stop_ids))
        out = np.concatenate([ids, np.stack(new, axis=1)], axis=1) if new else ids
        if isinstance(prompt, str):
            return self.tokenizer.decode(out[0])
        return out
