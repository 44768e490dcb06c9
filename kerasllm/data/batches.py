"""Fixed-length examples as batches: encoding texts into padded ids, and the tf.data pipeline
that fine-tuning and classifier evaluation feed to Keras."""

import numpy as np
import tensorflow as tf


def encode_texts(tokenizer, texts, max_length):
    """Right-padded `(len(texts), max_length)` int32 ids; longer texts keep their first tokens.

    Examples:

    >>> from kerasllm.tokenizers import CharTokenizer
    >>> tok = CharTokenizer.train(["abc"])
    >>> encode_texts(tok, ["ab", "abcabc"], 4).shape
    (2, 4)
    """
    out = np.full((len(texts), max_length), tokenizer.pad_id, dtype=np.int32)
    # One batched call: graph tokenizers (WordPiece, SentencePiece, BPE) cost milliseconds per
    # call, minutes for SST-2's 67k sentences one by one.
    for row, ids in enumerate(tokenizer.encode_batch(list(texts))):
        ids = ids[:max_length]
        out[row, : len(ids)] = ids
    return out


def make_dataset(arrays, batch_size, shuffle=False, seed=0, trim_pad_id=None):
    """A batched `tf.data.Dataset` of `arrays` (a tuple of equal-length arrays or dicts of them).

    Args:
        shuffle: reshuffle the whole set every pass, with `seed`.
        trim_pad_id: cut each batch's first array (right-padded ids) to its longest row (see
            `trim_padding`).

    Examples:

    >>> ds = make_dataset((np.zeros((5, 64), "int32"), np.arange(5)), 2, trim_pad_id=0)
    >>> [tuple(x.shape) for x, _ in ds]
    [(2, 32), (2, 32), (1, 32)]
    """
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        ds = ds.shuffle(len(tf.nest.flatten(arrays)[0]), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if trim_pad_id is not None:
        ds = ds.map(lambda x, *rest: (trim_padding(x, trim_pad_id), *rest))
    ds = ds.prefetch(2)
    options = tf.data.Options()
    # fit() can stall on return until a tf.data autotune period elapses; autotune off removes it.
    options.autotune.enabled = False
    return ds.with_options(options)


def trim_padding(x, pad_id, multiple=32):
    """Cuts a right-padded batch to its longest row, rounded up to `multiple` columns.

    Short examples (most SST-2 training phrases are under 40 characters) then cost a fraction
    of a full-length row; the rounding bounds the number of shapes XLA compiles.
    """
    longest = tf.reduce_max(tf.reduce_sum(tf.cast(tf.not_equal(x, pad_id), tf.int32), axis=1))
    width = tf.minimum(tf.maximum((longest + multiple - 1) // multiple, 1) * multiple, tf.shape(x)[1])
    return x[:, :width]
