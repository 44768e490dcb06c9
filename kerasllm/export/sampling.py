"""In-graph next-token choice: greedy, temperature, top-k and top-p with a stateless seeded RNG.

keras-hub's samplers fix `k`, `p` and the temperature when they are built; a serving signature
takes them as runtime tensors, so this one function handles every setting with TF ops.
"""

import tensorflow as tf


def sample_tokens(logits, temperature, top_k, top_p, seed, step):
    """Picks one token id per row of `logits`, entirely with TF ops.

    Args:
        logits: float32 `(batch, vocab)`.
        temperature: float32 scalar; 0 means greedy (argmax), otherwise logits are divided by it.
        top_k: int32 scalar; sample among the k likeliest tokens (0: all).
        top_p: float32 scalar in (0, 1]; keep the smallest set of likeliest tokens whose
            probability reaches `top_p` (1: all). Applied after `top_k`.
        seed: int32 scalar; with `step`, the seed of `tf.random.stateless_categorical`, so the
            same seed repeats the same samples.
        step: int32 scalar, the position being sampled (a different stream per position).

    Returns:
        int32 `(batch,)`.

    Examples:

    >>> import tensorflow as tf
    >>> logits = tf.constant([[0.0, 5.0, 1.0]])
    >>> sample_tokens(logits, 0.0, 0, 1.0, 0, 0).numpy()
    array([1], dtype=int32)
    >>> sample_tokens(logits, 1.0, 1, 1.0, 7, 3).numpy()  # top_k=1 is greedy too
    array([1], dtype=int32)
    """
    logits = tf.convert_to_tensor(logits, tf.float32)
    temperature = tf.convert_to_tensor(temperature, tf.float32)
    top_k = tf.convert_to_tensor(top_k, tf.int32)
    top_p = tf.convert_to_tensor(top_p, tf.float32)

    def greedy():
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    def sample():
        scaled = logits / temperature
        vocab = tf.shape(scaled)[-1]
        k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)
        ranked = tf.math.top_k(scaled, k=vocab).values  # (B, V), descending
        in_top_k = tf.range(vocab)[None, :] < k
        probs = tf.nn.softmax(tf.where(in_top_k, ranked, -float("inf")), axis=-1)
        # A token stays if the mass ranked above it is below top_p (the top token always stays).
        mass_before = tf.math.cumsum(probs, axis=-1, exclusive=True)
        keep = in_top_k & ((mass_before < top_p) | (top_p >= 1.0))
        kept = tf.reduce_sum(tf.cast(keep, tf.int32), axis=-1)  # (B,) >= 1
        threshold = tf.gather(ranked, kept - 1, batch_dims=1)[:, None]  # smallest kept logit
        filtered = tf.where(scaled >= threshold, scaled, -float("inf"))
        seeds = tf.stack([tf.cast(seed, tf.int32), tf.cast(step, tf.int32)])
        return tf.random.stateless_categorical(filtered, 1, seed=seeds, dtype=tf.int32)[:, 0]

    return tf.cond(temperature > 0.0, sample, greedy)
