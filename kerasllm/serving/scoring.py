"""Per-token log-probabilities of a text under a language model (teacher forcing).

The windows are the evaluate recipe's (`kerasllm.training.metrics.sliding_windows`), so the
mean of `-token_logprobs(...)` is exactly `language_model_loss`: each token is predicted once,
with at least `block_size - stride` tokens of context.
"""

import numpy as np
from keras import ops

from kerasllm.training.metrics import sliding_windows


def token_logprobs(model, ids, block_size, stride=None, top=0, batch_size=16):
    """Log-probability of every token but the first given the tokens before it.

    Args:
        model: maps `(batch, time)` ids to `(batch, time, vocab)` logits (GPT or LSTM).
        ids: 1-D token ids.
        block_size: window length (the model's context).
        stride: window step; default half the window, as `evaluate`.
        top: also return the `top` likeliest tokens at every position.
        batch_size: windows per forward pass.

    Returns:
        `(logprobs, top_tokens)`: float64 `(len(ids) - 1,)` natural-log probabilities of
        `ids[1:]`, and a list with, per position, `[(token_id, logprob), ...]` best first
        (empty lists when `top` is 0).

    Examples:

    >>> from kerasllm.models import GPT
    >>> model = GPT(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8)
    >>> logprobs, top = token_logprobs(model, [1, 2, 3, 4], block_size=8, top=2)
    >>> logprobs.shape, len(top), len(top[0]), bool((logprobs < 0).all())
    ((3,), 3, 2, True)
    """
    ids = np.asarray(ids, dtype=np.int32).reshape(-1)
    if len(ids) < 2:
        return np.zeros(0), []
    block = min(block_size, len(ids) - 1)
    stride = min(stride or max(block // 2, 1), block)
    windows = sliding_windows(len(ids), block, stride)
    logprobs = np.zeros(len(ids) - 1)
    top_tokens = [[] for _ in range(len(ids) - 1)]
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        x = np.stack([ids[s : s + block] for s, _ in chunk])  # (B, T)
        scores = ops.convert_to_numpy(ops.log_softmax(model(x, training=False), axis=-1))  # (B, T, V)
        for row, (start, scored_from) in zip(scores, chunk):
            for t in range(scored_from, block):
                target = start + t  # index into ids[1:]
                logprobs[target] = row[t, ids[target + 1]]
                if top:
                    best = np.argsort(-row[t], kind="stable")[:top]
                    top_tokens[target] = [(int(i), float(row[t, i])) for i in best]
    return logprobs, top_tokens
