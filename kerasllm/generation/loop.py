"""The decoding loop in `keras.ops`, for any model with keras-hub's cached-decoding interface.

A model implements `init_cache(batch_size, max_length)` and
`call_with_cache(token_ids, cache, cache_index, padding_mask=None, offsets=None)` (a GPT's
key/value cache, an LSTM's recurrent state). The loop fills the cache with the prompts
(prefill, in chunks of `PREFILL_CHUNK` tokens), then samples one token per step and runs it
against the cache. `Generator.generate` compiles `decode` whole, `Generator.stream` calls the
same `prefill` and `advance` from Python, and the SavedModel export traces `decode` into its
`generate` signature: three callers, one loop.

Prompts in a batch may have different lengths: `decode` right-aligns them in the cache (row
`b` starts at slot `offsets[b]`, its positions count from there, and a GPT never attends to the
slots before it; an LSTM's state is kept over them), so every row samples its first token at
the same step and a ragged batch takes `max_new_tokens` steps, like each of its rows alone.
"""

import numpy as np
from keras import ops

from kerasllm.generation.sampling import sample_tokens

PREFILL_CHUNK = 16  # prompt tokens per prefill call: a compiled call needs a static shape


def prefill(model, buffer, start, offsets=None):
    """Runs the first `start` slots of every row into a fresh cache.

    In chunks of `PREFILL_CHUNK` slots (fixed shapes, so one compilation serves every prompt
    length), `ceil(start / PREFILL_CHUNK)` of them: the cost follows the prompts, not the
    buffer. The last chunk ends at most at the buffer's end, overlapping the previous one
    there; the padding mask keeps an LSTM from reading an overlapped slot twice (a GPT just
    recomputes the same keys and values), and the slots at and after `start`, which a GPT's
    decoding steps rewrite before anything attends to them.

    Args:
        model: the language model.
        buffer: int32 `(batch, length)`, the prompts; `length` is the cache length.
        start: int32 scalar, the slots to run (every row's prompt ends there or before).
        offsets: optional int32 `(batch,)`, the slot where each row begins (left padding).

    Returns:
        `(logits, cache)`: float32 `(batch, vocab)` predicting slot `start` (meaningless
        when `start` is 0), and the cache.
    """
    batch, length = ops.shape(buffer)[0], ops.shape(buffer)[1]
    chunk = min(PREFILL_CHUNK, length) if isinstance(length, int) else ops.minimum(PREFILL_CHUNK, length)
    cache = model.init_cache(batch, length)
    chunks = ops.maximum((start + chunk - 1) // chunk, 1)
    extra = {} if offsets is None else {"offsets": offsets}

    def run(j, cache):
        first = ops.minimum(j * chunk, length - chunk)
        slots = first + ops.arange(chunk, dtype="int32")  # (C,)
        mask = ops.broadcast_to(((slots >= j * chunk) & (slots < start))[None, :], (batch, chunk))
        if offsets is not None:
            mask = mask & (slots[None, :] >= ops.cast(offsets, "int32")[:, None])
        ids = ops.take(buffer, slots, axis=1)  # (B, C): a gather, since XLA recompiles a slice per offset
        logits, cache = model.call_with_cache(ids, cache, first, padding_mask=mask, **extra)  # (B, C, V)
        return logits, cache, first

    def body(j, cache):
        return j + 1, run(j, cache)[1]

    _, cache = ops.while_loop(lambda j, cache: j < chunks - 1, body, (ops.zeros((), "int32"), cache))
    logits, cache, first = run(chunks - 1, cache)
    last = ops.reshape(ops.maximum(start - 1, 0) - first, (1,))
    return ops.take(logits, last, axis=1)[:, 0], cache


def rows_per_pass(batch):
    """Packed rows per pass of `packed_prefill`: a quarter of the batch (at least one).

    On 2 CPU cores a 128-token forward pass costs about the same laid out as (8, 16) or
    (1, 128) tokens (benchmarks/RESULTS.md, issue 19): what packing saves is the padding.
    """
    return max(1, batch // 4)


def pack_prompts(rows, length):
    """Lays out a batch's prompts for `packed_prefill` (host side, NumPy).

    The prompts go, longest first, into the first packed row of `length` slots with room
    (first-fit decreasing); each keeps the cache row and the right-aligned slots `decode`
    gives it. Packed rows are grouped `rows_per_pass(batch)` to a pass. Unused cells are
    filler (segment -1) written to the last slot of row 0, which the first decoding step that
    reaches it rewrites before anything attends to it.

    Args:
        rows: the prompts, lists or 1-D int arrays, each at least 1 and less than `length` long.
        length: the cache length.

    Returns:
        A dict of int32 arrays: `ids`, `segments`, `rows`, `slots`, each `(passes, rows per
        pass, length)` (room for one packed row per prompt), `last` `(batch, 2)` (the packed
        row and column of each prompt's last token) and `passes` (the passes in use).

    Examples:

    >>> packing = pack_prompts([[5, 6, 7], [8]], 8)
    >>> packing["ids"][0, 0].tolist(), packing["slots"][0, 0, :4].tolist(), int(packing["passes"])
    ([5, 6, 7, 8, 0, 0, 0, 0], [0, 1, 2, 2], 1)
    """
    lengths = [len(r) for r in rows]
    start = max(lengths)  # every prompt ends here once right-aligned
    fills, members = [], []
    for b in sorted(range(len(rows)), key=lambda b: -lengths[b]):
        g = next((g for g, fill in enumerate(fills) if fill + lengths[b] <= length), len(fills))
        if g == len(fills):
            fills.append(0)
            members.append([])
        fills[g] += lengths[b]
        members[g].append(b)
    per_pass = rows_per_pass(len(rows))
    packed = -(-len(rows) // per_pass) * per_pass
    grid = {"ids": np.zeros((packed, length), np.int32), "segments": np.full((packed, length), -1, np.int32),
            "rows": np.zeros((packed, length), np.int32), "slots": np.full((packed, length), length - 1, np.int32)}
    last = np.zeros((len(rows), 2), np.int32)
    for g, batch_rows in enumerate(members):
        column = 0
        for b in batch_rows:
            n, cells = lengths[b], slice(column, column + lengths[b])
            grid["ids"][g, cells], grid["segments"][g, cells], grid["rows"][g, cells] = rows[b], b, b
            grid["slots"][g, cells] = np.arange(start - n, start)
            last[b] = (g, column + n - 1)
            column += n
    out = {name: a.reshape(packed // per_pass, per_pass, length) for name, a in grid.items()}
    return {**out, "last": last, "passes": np.asarray(-(-len(fills) // per_pass), np.int32)}


def packed_prefill(model, packing, batch, length):
    """`prefill` of right-aligned prompts from their `pack_prompts` layout.

    Runs one pass of packed rows at a time (`model.prefill_packed`), as many passes as the
    packed rows in use need: the cost follows the prompts' total length, where `prefill` pays
    every row up to the longest prompt.

    Args:
        model: a language model with `prefill_packed` (a `GPT`).
        packing: the arrays of `pack_prompts` (as tensors).
        batch: rows of the cache.
        length: the cache length.

    Returns:
        `(logits, cache)`: float32 `(batch, vocab)` predicting each row's first new token, and
        the cache, holding what `prefill(model, aligned, start, offsets)` holds.
    """
    per_pass = ops.shape(packing["ids"])[1]
    last = ops.cast(packing["last"], "int32")  # (B, 2)

    def run(p, cache):
        ids, segments, rows, slots = (ops.take(packing[k], p, axis=0) for k in ("ids", "segments", "rows", "slots"))
        picks = ops.stack([ops.clip(last[:, 0] - p * per_pass, 0, per_pass - 1), last[:, 1]], axis=1)  # (B, 2)
        logits, cache = model.prefill_packed(ids, segments, cache, rows, slots, picks)  # (B, V)
        here = (last[:, 0] >= p * per_pass) & (last[:, 0] < (p + 1) * per_pass)  # (B,)
        return here, logits, cache

    _, logits, cache = run(0, model.init_cache(batch, length))

    def body(p, logits, cache):
        here, new, cache = run(p, cache)
        return p + 1, ops.where(here[:, None], new, logits), cache

    passes = ops.cast(packing["passes"], "int32")
    _, logits, cache = ops.while_loop(lambda p, logits, cache: p < passes, body, (ops.ones((), "int32"), logits, cache))
    return logits, cache


def advance(model, logits, cache, index, position, sampling, offsets=None):
    """Samples the token at slot `index` from `logits` and runs it against the cache.

    Args:
        model: the language model.
        logits: float32 `(batch, vocab)` predicting the token at `index`.
        cache: the cache holding the tokens before `index`.
        index: int32 scalar, the token's cache slot.
        position: int32 scalar or `(batch,)`, the token's position in its row (the key of the
            random draw; `index - offsets`, or `index` unless a caller slid its window).
        sampling: dict of the sampler settings (`sampling.sampling_inputs`).
        offsets: optional int32 `(batch,)`, the slot where each row begins (left padding).

    Returns:
        `(token, logits, cache)`: int32 `(batch,)`, the logits predicting `index + 1` and the cache.
    """
    token = sample_tokens(logits, sampling["temperature"], sampling["top_k"], sampling["top_p"],
                          sampling["seeds"], position)
    extra = {} if offsets is None else {"offsets": offsets}
    logits, cache = model.call_with_cache(token[:, None], cache, index, **extra)
    return token, logits[:, 0], cache


def decode(model, buffer, lengths, max_new_tokens, sampling, stop_ids, packing=None):
    """Generates up to `max_new_tokens` after each row's prompt.

    The rows are right-aligned in the cache, so that every prompt ends at slot
    `max(lengths)`; the loop then takes `max_new_tokens` steps (a traced limit: a buffer
    padded beyond it costs no steps), or fewer once every row has produced one of `stop_ids`.
    With `packing` (the prompts' `pack_prompts` layout, for a model with `prefill_packed`)
    the cache is filled by `packed_prefill` instead of `prefill`.

    Args:
        model: the language model.
        buffer: int32 `(batch, length)`, right-padded prompts; `length >= max(lengths) +
            max_new_tokens` (and within a GPT's context).
        lengths: int32 `(batch,)` prompt lengths, each >= 1.
        max_new_tokens: int32 scalar.
        sampling: dict of the sampler settings, `(batch,)` tensors.
        stop_ids: int32 `(n,)`, possibly empty.
        packing: optional dict of `pack_prompts` arrays for these prompts and `length`.

    Returns:
        int32 `(batch, length)`: each row's prompt and new tokens, right-padded as `buffer`
        (later slots unspecified).

    Examples:

    >>> import numpy as np
    >>> from kerasllm.generation.sampling import sampling_inputs
    >>> from kerasllm.models import GPT
    >>> model = GPT(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)
    >>> buffer = np.array([[1, 2, 3, 0, 0, 0, 0, 0], [4, 0, 0, 0, 0, 0, 0, 0]], "int32")
    >>> out = decode(model, buffer, np.array([3, 1], "int32"), 4, sampling_inputs(2, temperature=0),
    ...              np.zeros([0], "int32"))
    >>> tuple(out.shape), ops.convert_to_numpy(out)[0, :3].tolist(), ops.convert_to_numpy(out)[1, :1].tolist()
    ((2, 8), [1, 2, 3], [4])
    """
    batch, length = ops.shape(buffer)[0], ops.shape(buffer)[1]
    lengths = ops.cast(lengths, "int32")
    start = ops.max(lengths)  # every row's prompt ends here once right-aligned
    offsets = start - lengths  # (B,)
    end = start + ops.cast(max_new_tokens, "int32")
    slots = ops.arange(length, dtype="int32")[None, :]  # (1, L)
    aligned = _roll_rows(buffer, offsets)
    if packing is None:
        logits, cache = prefill(model, aligned, start, offsets)
    else:
        logits, cache = packed_prefill(model, packing, batch, length)
    stop_ids = ops.cast(stop_ids, "int32")

    def cond(index, aligned, logits, cache, done):
        return ops.logical_and(index < end, ops.logical_not(ops.all(done)))

    def body(index, aligned, logits, cache, done):
        token, logits, cache = advance(model, logits, cache, index, index - offsets, sampling, offsets)
        aligned = ops.where(slots == index, token[:, None], aligned)
        done = done | ops.any(token[:, None] == stop_ids[None, :], axis=1)
        return index + 1, aligned, logits, cache, done

    done = ops.zeros((batch,), "bool")
    _, aligned, _, _, _ = ops.while_loop(cond, body, (start, aligned, logits, cache, done))
    return _roll_rows(aligned, -offsets)


def _roll_rows(ids, shifts):
    """Row `b` of `ids` rotated right by `shifts[b]` slots (left by a negative shift)."""
    length = ops.shape(ids)[1]
    source = (ops.arange(length, dtype="int32")[None, :] - shifts[:, None]) % length  # (B, L)
    return ops.take_along_axis(ids, source, axis=1)


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
