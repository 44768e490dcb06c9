"""Next-token choice from logits: greedy, temperature, top-k and top-p (nucleus) sampling."""

import numpy as np


def sample_next(logits, rng, temperature=1.0, top_k=0, top_p=1.0):
    """Picks one token id per row of `logits`.

    Args:
        logits: `(batch, vocab)` array.
        rng: a `numpy.random.Generator` (seeded by the caller, so results repeat).
        temperature: 0 means greedy (argmax); otherwise logits are divided by it.
        top_k: keep only the k most likely tokens; 0 keeps all.
        top_p: keep the smallest set of tokens whose probability reaches `top_p`; 1 keeps all.

    Returns:
        int32 array `(batch,)`.

    Examples:

    >>> import numpy as np
    >>> sample_next(np.array([[0.0, 5.0, 1.0]]), np.random.default_rng(0), temperature=0)
    array([1], dtype=int32)
    """
    logits = np.asarray(logits, dtype=np.float64)
    if temperature <= 0:
        return np.argmax(logits, axis=-1).astype(np.int32)
    logits = logits / temperature
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(logits, vocab - top_k, axis=-1)[:, vocab - top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # Keep a token if the mass before it is below top_p (so the top token always stays).
        keep_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    cumulative = np.cumsum(probs, axis=-1)
    draws = rng.random((probs.shape[0], 1))
    return np.minimum((cumulative < draws).sum(axis=-1), vocab - 1).astype(np.int32)
