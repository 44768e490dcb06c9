"""Next-token choice in `keras.ops`: greedy, temperature, top-k and top-p, seeded per row.

The settings are tensors, not Python constants, so one compiled decoding loop serves every
setting; each may be a scalar or one value per row `(batch,)` (a server batches requests with
different settings). The random draw of a row depends only on its seed and on the position of
the token being sampled, never on the other rows of the batch or on which path (the compiled
loop, `Generator.stream`, the SavedModel export) asks for it.
"""

import math

import numpy as np
from keras import ops


def sample_tokens(logits, temperature, top_k, top_p, seeds, positions):
    """Picks one token id per row of `logits`.

    A row with `temperature == 0` takes the argmax. Otherwise its logits are divided by the
    temperature, cut to the `top_k` likeliest tokens (0: all), then to the smallest set of
    likeliest tokens whose probability reaches `top_p` (1: all; the likeliest token always
    stays), and one token is drawn by inverting the cumulative distribution at a uniform number
    keyed by `(seed, position)` of that row.

    Args:
        logits: float `(batch, vocab)`.
        temperature: float, scalar or `(batch,)`, >= 0.
        top_k: int, scalar or `(batch,)`, >= 0.
        top_p: float, scalar or `(batch,)`, in (0, 1].
        seeds: int32, scalar or `(batch,)`: the seed of each row.
        positions: int32, scalar or `(batch,)`: the position (in its row) of the token sampled.

    Returns:
        int32 `(batch,)`.

    Examples:

    >>> logits = np.array([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0]], np.float32)
    >>> ops.convert_to_numpy(sample_tokens(logits, 0.0, 0, 1.0, 0, 7))  # greedy
    array([1, 0], dtype=int32)
    >>> ops.convert_to_numpy(sample_tokens(logits, 1.0, 1, 1.0, [5, 6], 7))  # top_k=1 is greedy
    array([1, 0], dtype=int32)
    >>> a = sample_tokens(logits, 2.0, 0, 0.9, [3, 4], 7)
    >>> bool(ops.all(a == sample_tokens(logits, 2.0, 0, 0.9, [3, 4], 7)))  # seeded
    True
    """
    logits = ops.cast(logits, "float32")
    batch = ops.shape(logits)[0]

    def per_row(value, dtype):
        return ops.broadcast_to(ops.cast(value, dtype), (batch,))

    temperature = per_row(temperature, "float32")
    greedy = ops.cast(ops.argmax(logits, axis=-1), "int32")

    def sample():
        return _sample(logits, temperature, per_row(top_k, "int32"), per_row(top_p, "float32"),
                       per_row(seeds, "int32"), per_row(positions, "int32"))

    # The sort and the random draws are skipped when every row is greedy.
    sampled = ops.cond(ops.any(temperature > 0), sample, lambda: greedy)
    return ops.where(temperature > 0, sampled, greedy)


def _sample(logits, temperature, top_k, top_p, seeds, positions):
    """Temperature, top-k and top-p by thresholds, then one inverse-CDF draw in vocabulary order.

    No sort: XLA:CPU sorts with a comparator call per pair, which took 86 ms per step for 8 rows
    of a 50k vocabulary (0.19 ms for 171); each threshold here is a 32-step search of compares
    and sums (benchmarks/RESULTS.md, issue 19). Tokens tied with the k-th likeliest all stay.
    """
    vocab, batch = logits.shape[-1], ops.shape(logits)[0]
    safe = ops.where(temperature > 0, temperature, 1.0)[:, None]
    scaled = logits / safe  # (B, V)
    k = ops.where(top_k > 0, ops.minimum(top_k, vocab), vocab)  # (B,)
    keys = _order_keys(scaled)  # (B, V) int32, ordered as the floats
    kth = ops.cond(ops.any(k < vocab), lambda: _kth_largest(keys, k),
                   lambda: ops.min(keys, axis=-1))  # (B,)
    probs = ops.softmax(ops.where(keys >= kth[:, None], scaled, -math.inf), axis=-1)  # (B, V)
    prob_keys = _order_keys(probs)  # probabilities are >= 0: the keys are their bits
    floor = ops.cond(ops.any(top_p < 1.0), lambda: _nucleus_floor(prob_keys, probs, top_p),
                     lambda: ops.zeros((batch,), "int32"))  # (B,)
    weights = ops.where(prob_keys >= floor[:, None], probs, 0.0)
    cdf = ops.cumsum(weights, axis=-1)  # (B, V)
    draw = uniform_per_row(seeds, positions)[:, None] * cdf[:, -1:]  # (B, 1), below the total
    choice = ops.sum(ops.cast(cdf <= draw, "int32"), axis=-1)  # the first token whose cdf passes the draw
    return ops.cast(ops.minimum(choice, vocab - 1), "int32")


def _order_keys(x):
    """int32 keys of float32 `x` in the same order as the floats (the sign-magnitude bits made two's complement)."""
    bits = ops.view(ops.cast(x, "float32"), "int32")
    return ops.where(bits < 0, ops.bitwise_xor(bits, np.int32(0x7FFFFFFF)), bits)


def _kth_largest(keys, k):
    """Per row, the `k`-th largest of `keys` (with repeats): the largest `t` that `k` keys reach."""
    def halve(_, bounds):
        lo, hi = bounds
        mid = ops.right_shift(lo, 1) + ops.right_shift(hi, 1) + ops.bitwise_and(ops.bitwise_or(lo, hi), 1)  # ceil
        reached = ops.sum(ops.cast(keys >= mid[:, None], "int32"), axis=-1) >= k
        return ops.where(reached, mid, lo), ops.where(reached, hi, mid - 1)

    # (B,) each: lo always qualifies; 32 halvings cover the int32 range. A loop, not unrolled:
    # unrolled passes made every compile of the decoding loop slower.
    lo, _ = ops.fori_loop(0, 32, halve, (ops.min(keys, axis=-1), ops.max(keys, axis=-1)))
    return lo


def _nucleus_floor(keys, probs, top_p):
    """Per row, the smallest probability key whose strictly likelier tokens hold less than `top_p`.

    A token stays when the mass above it is below `top_p`, so the likeliest always stays; rows
    with `top_p >= 1` keep everything (floor 0). `keys` are `_order_keys(probs)`.
    """

    def halve(_, bounds):
        lo, hi = bounds
        mid = ops.right_shift(lo, 1) + ops.right_shift(hi, 1) + ops.bitwise_and(ops.bitwise_and(lo, hi), 1)  # floor
        small = ops.sum(ops.where(keys > mid[:, None], probs, 0.0), axis=-1) < top_p
        return ops.where(small, lo, mid + 1), ops.where(small, mid, hi)

    # hi always qualifies; keys of non-negative floats span 31 bits.
    lo, _ = ops.fori_loop(0, 31, halve, (ops.zeros_like(top_p, dtype="int32"), ops.max(keys, axis=-1)))
    return ops.where(top_p >= 1.0, 0, lo)


def uniform_per_row(seeds, positions):
    """One uniform number in [0, 1) per row, a pure function of that row's `(seed, position)`.

    A counter-based hash (two rounds of the `lowbias32` integer mixer) in `keras.ops` rather
    than a backend's stateless generator: TensorFlow's Philox gives other numbers under XLA than
    in its plain kernels, and the compiled loop, `stream` and the (unXLA'd) SavedModel must draw
    the same ones. It is bit-identical on every backend and path; 24 bits per draw.

    Args:
        seeds: int32 `(batch,)`.
        positions: int32 `(batch,)`.

    Returns:
        float32 `(batch,)`.

    Examples:

    >>> u = ops.convert_to_numpy(uniform_per_row(np.array([1, 2], np.int32), np.array([0, 0], np.int32)))
    >>> bool(((0 <= u) & (u < 1)).all()), bool(u[0] != u[1])
    (True, True)
    """
    seeds, positions = ops.cast(seeds, "uint32"), ops.cast(positions, "uint32")
    bits = _mix(ops.bitwise_xor(_mix(ops.bitwise_xor(seeds, _uint32(0x9E3779B9))), positions))
    return ops.cast(ops.right_shift(bits, _uint32(8)), "float32") * (1.0 / (1 << 24))


def _uint32(value):
    return ops.convert_to_tensor(np.uint32(value), dtype="uint32")


def _mix(x):
    """`lowbias32` (C. Wellons' hash-prospector): a well-mixing bijection of uint32."""
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = ops.multiply(ops.bitwise_xor(x, ops.right_shift(x, _uint32(shift))), _uint32(multiplier))
    return ops.bitwise_xor(x, ops.right_shift(x, _uint32(16)))


def sampling_inputs(batch, temperature=1.0, top_k=0, top_p=1.0, seed=None):
    """Checks the sampler settings and turns them into per-row arrays.

    Args:
        batch: number of rows.
        temperature: >= 0 (0: greedy); a number or one per row.
        top_k: >= 0 (0: off); an int or one per row.
        top_p: in (0, 1] (1: off); a number or one per row.
        seed: an int (row `i` uses `seed + i`), one int per row, or None (a fresh random seed).

    Returns:
        A dict of `(batch,)` arrays: `temperature` and `top_p` float32, `top_k` and `seeds`
        int32.

    Raises:
        ValueError: naming the argument out of range.

    Examples:

    >>> sampling_inputs(2, temperature=0.8, top_k=40, seed=7)["seeds"]
    array([7, 8], dtype=int32)
    """

    def rows(name, value, dtype):
        array = np.asarray(value, np.float64)
        if array.ndim > 1 or array.ndim == 1 and array.shape[0] != batch:
            raise ValueError(f"{name}: expected a number or {batch} numbers (one per row), got shape {array.shape}")
        return np.broadcast_to(array, (batch,)).astype(dtype)

    values = {"temperature": rows("temperature", temperature, np.float64),
              "top_k": rows("top_k", top_k, np.float64), "top_p": rows("top_p", top_p, np.float64)}
    if not (np.isfinite(values["temperature"]).all() and (values["temperature"] >= 0).all()):
        raise ValueError(f"temperature={temperature}: expected a finite number >= 0 (0: greedy)")
    if not ((values["top_k"] >= 0).all() and (values["top_k"] == np.round(values["top_k"])).all()):
        raise ValueError(f"top_k={top_k}: expected an integer >= 0 (0: off)")
    if not ((values["top_p"] > 0).all() and (values["top_p"] <= 1).all()):
        raise ValueError(f"top_p={top_p}: expected a number in (0, 1] (1: off)")
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    seed_array = np.asarray(seed)
    if seed_array.dtype.kind not in "iu":
        raise ValueError(f"seed={seed}: expected an integer or one integer per row")
    if seed_array.ndim == 0:
        seed_array = seed_array + np.arange(batch)
    rows("seed", seed_array, np.float64)  # checks the shape
    return {
        "temperature": values["temperature"].astype(np.float32),
        "top_k": np.minimum(values["top_k"], 2**31 - 1).astype(np.int32),
        "top_p": values["top_p"].astype(np.float32),
        "seeds": seed_array.astype(np.int64).astype(np.int32),  # wraps like int32 arithmetic
    }
