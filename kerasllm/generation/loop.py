"""The decoding loop in `keras.ops`, for any model with keras-hub's cached-decoding interface.

A model implements `init_cache(batch_size, max_length)` and
`call_with_cache(token_ids, cache, cache_index, padding_mask=None)` (a GPT's key/value cache,
an LSTM's recurrent state). The loop fills the cache with the prompts at once (prefill), then
samples one token per step and runs it against the cache. `Generator.generate` compiles
`decode` whole, `Generator.stream` calls the same `prefill` and `advance` from Python, and the
SavedModel export traces `decode` into its `generate` signature: three callers, one loop.

Prompts in a batch may have different lengths: rows are right-padded, and while the shorter
rows already sample, each longer row's remaining prompt tokens are forced (as keras-hub does).
"""

from keras import ops

from kerasllm.generation.sampling import sample_tokens


def prefill(model, buffer, start):
    """Runs the first `start` tokens of every row into a fresh cache.

    Args:
        model: the language model.
        buffer: int32 `(batch, length)`, right-padded prompts; `length` is the cache length.
        start: int32 scalar, tokens every row has (at most the shortest prompt's length).

    Returns:
        `(logits, cache)`: float32 `(batch, vocab)` predicting position `start` (meaningless
        when `start` is 0), and the cache.
    """
    batch, length = ops.shape(buffer)[0], ops.shape(buffer)[1]
    cache = model.init_cache(batch, length)
    # One fixed-shape call over the whole buffer (a compiled function needs static shapes);
    # the mask tells a recurrent model to keep its state over positions >= start, and a GPT's
    # cache slots there are rewritten by a decode step before anything attends to them.
    mask = ops.broadcast_to(ops.arange(length)[None, :] < start, (batch, length))
    logits, cache = model.call_with_cache(buffer, cache, 0, padding_mask=mask)  # (B, L, V)
    last = ops.reshape(ops.maximum(start - 1, 0), (1,))
    return ops.take(logits, last, axis=1)[:, 0], cache


def advance(model, logits, cache, index, position, sampling, forced=None):
    """Samples the token at `index` from `logits` and runs it against the cache.

    Args:
        model: the language model.
        logits: float32 `(batch, vocab)` predicting the token at `index`.
        cache: the cache holding the tokens before `index`.
        index: int32 scalar, the token's cache slot.
        position: int32 scalar or `(batch,)`, the token's position in its row (the key of the
            random draw; equal to `index` unless a caller slid its window).
        sampling: dict of the sampler settings (`sampling.sampling_inputs`).
        forced: optional int32 `(batch,)` prompt tokens, used where `forced >= 0`.

    Returns:
        `(token, logits, cache)`: int32 `(batch,)`, the logits predicting `index + 1` and the cache.
    """
    token = sample_tokens(logits, sampling["temperature"], sampling["top_k"], sampling["top_p"],
                          sampling["seeds"], position)
    if forced is not None:
        token = ops.where(forced >= 0, forced, token)
    logits, cache = model.call_with_cache(token[:, None], cache, index)
    return token, logits[:, 0], cache


def decode(model, buffer, lengths, max_new_tokens, sampling, stop_ids):
    """Generates up to `max_new_tokens` after each row's prompt.

    The loop runs from the shortest prompt's end to the longest row's
    `prompt + max_new_tokens` (a traced limit: a buffer padded beyond it costs no steps), or
    until every row has produced one of `stop_ids` (or reached its end).

    Args:
        model: the language model.
        buffer: int32 `(batch, length)`, right-padded prompts; `length >= max(lengths) +
            max_new_tokens` (and within a GPT's context).
        lengths: int32 `(batch,)` prompt lengths, each >= 1.
        max_new_tokens: int32 scalar.
        sampling: dict of the sampler settings, `(batch,)` tensors.
        stop_ids: int32 `(n,)`, possibly empty.

    Returns:
        int32 `(batch, length)`: each row's prompt and new tokens (later slots unspecified).

    Examples:

    >>> import numpy as np
    >>> from kerasllm.generation.sampling import sampling_inputs
    >>> from kerasllm.models import GPT
    >>> model = GPT(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)
    >>> buffer = np.array([[1, 2, 3, 0, 0, 0, 0, 0], [4, 0, 0, 0, 0, 0, 0, 0]], "int32")
    >>> out = decode(model, buffer, np.array([3, 1], "int32"), 4, sampling_inputs(2, temperature=0),
    ...              np.zeros([0], "int32"))
    >>> tuple(out.shape), ops.convert_to_numpy(out)[0, :3].tolist()
    ((2, 8), [1, 2, 3])
    """
    batch, length = ops.shape(buffer)[0], ops.shape(buffer)[1]
    lengths = ops.cast(lengths, "int32")
    start = ops.min(lengths)
    ends = lengths + ops.cast(max_new_tokens, "int32")  # (B,)
    positions = ops.arange(length)[None, :]  # (1, L)
    logits, cache = prefill(model, buffer, start)

    def cond(index, buffer, logits, cache, done):
        return ops.logical_and(index < ops.max(ends), ops.logical_not(ops.all(done)))

    def body(index, buffer, logits, cache, done):
        prompt = ops.take(buffer, ops.reshape(index, (1,)), axis=1)[:, 0]  # (B,)
        in_prompt = index < lengths
        forced = ops.where(in_prompt, prompt, -1)
        token, logits, cache = advance(model, logits, cache, index, index, sampling, forced)
        buffer = ops.where(positions == index, token[:, None], buffer)
        is_stop = ops.any(token[:, None] == ops.cast(stop_ids, "int32")[None, :], axis=1)
        done = done | (~in_prompt & is_stop) | (index + 1 >= ends)
        return index + 1, buffer, logits, cache, done

    done = ops.zeros((batch,), "bool")
    _, buffer, _, _, _ = ops.while_loop(cond, body, (start, buffer, logits, cache, done))
    return buffer


def last_logits(model, ids, lengths):
    """Full forward pass (no cache): the logits after each row's last token.

    Args:
        model: the language model.
        ids: int32 `(batch, length)`, right-padded (causal models never look ahead).
        lengths: int32 `(batch,)`.

    Returns:
        float32 `(batch, vocab)`.
    """
    logits = model(ids)  # (B, L, V)
    return ops.take_along_axis(logits, ops.reshape(lengths - 1, (-1, 1, 1)), axis=1)[:, 0]
