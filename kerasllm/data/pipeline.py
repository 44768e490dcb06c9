"""From documents to `tf.data` batches of (inputs, targets) windows for language modelling.

    documents --split--> train/val documents --tokenize--> id arrays (EOS after each document)
              --windows of block_size + 1--> (x, y = x shifted by one) --shuffle--> batch --> prefetch

Token windows are cut once in numpy and handed to `tf.data` as tensors, so the per-step input
cost is a slice of an in-memory array: no per-element Python or `map` work in the training loop.
"""

import numpy as np
import tensorflow as tf

from kerasllm.errors import DataError


def split_documents(documents, val_fraction=0.1, split="position", seed=1337):
    """Splits documents into train and validation parts, with no overlap.

    Args:
        documents: list of strings.
        val_fraction: share of the characters ("position") or documents ("document") held out.
        split: "position" cuts the concatenated corpus at `1 - val_fraction` of its characters
            (the last part is validation, as nanoGPT does); "document" holds out whole
            documents chosen with `seed`.
        seed: seed of the document choice.

    Returns:
        `(train_documents, val_documents)`.

    Examples:

    >>> split_documents(["abcdefghij"], val_fraction=0.2)
    (['abcdefgh'], ['ij'])
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction = {val_fraction}: expected a number between 0 and 1")
    if split == "document":
        if len(documents) < 2:
            raise DataError(
                f"data.split = 'document' needs at least 2 documents, got {len(documents)}; "
                "use data.split = 'position'"
            )
        order = np.random.default_rng(seed).permutation(len(documents))
        n_val = min(max(1, round(val_fraction * len(documents))), len(documents) - 1)
        val_index = set(order[:n_val].tolist())
        train = [d for i, d in enumerate(documents) if i not in val_index]
        val = [d for i, d in enumerate(documents) if i in val_index]
        return train, val
    if split != "position":
        raise DataError(f"data.split = {split!r}: expected 'position' or 'document'")
    total = sum(len(d) for d in documents)
    cut = int(round(total * (1.0 - val_fraction)))
    train, val, seen = [], [], 0
    for doc in documents:
        if seen + len(doc) <= cut:
            train.append(doc)
        elif seen >= cut:
            val.append(doc)
        else:
            train.append(doc[: cut - seen])
            val.append(doc[cut - seen :])
        seen += len(doc)
    return [d for d in train if d], [d for d in val if d]


def encode_documents(tokenizer, documents, add_eos=True):
    """Tokenizes documents into one int32 array, with `<eos>` after each document."""
    parts = []
    eos = np.array([tokenizer.eos_id], dtype=np.int32)
    for doc in documents:
        parts.append(np.asarray(tokenizer.encode(doc), dtype=np.int32))
        if add_eos:
            parts.append(eos)
    return np.concatenate(parts) if parts else np.zeros([0], np.int32)


def _windows(ids, block_size, stride):
    if len(ids) < block_size + 1:
        return None
    view = np.lib.stride_tricks.sliding_window_view(ids, block_size + 1)[::stride]
    return np.ascontiguousarray(view[:, :-1]), np.ascontiguousarray(view[:, 1:])


def _no_autotune(dataset):
    # The tf.data autotuner can stall iterator teardown (and so fit()'s return) for up to a
    # minute on small CPUs; the pipeline below needs no tuning, so it is switched off.
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return dataset.with_options(options)


def lm_dataset(
    ids,
    block_size,
    batch_size,
    stride=0,
    shuffle=True,
    repeat=True,
    seed=1337,
    max_batches=None,
    name="train",
):
    """A dataset of `(inputs, targets)` int32 batches of shape `(batch_size, block_size)`.

    Args:
        ids: 1-D array of token ids.
        block_size: window length; each window is read from `block_size + 1` ids.
        batch_size: sequences per batch (incomplete last batches are dropped).
        stride: step between window starts; 0 means `block_size` (windows do not overlap).
        shuffle: reshuffle the windows every epoch, deterministically from `seed`.
        repeat: repeat forever (training) or stop after one pass (evaluation).
        seed: shuffle seed.
        max_batches: stop after this many batches (a fixed validation set).
        name: split name used in error messages.

    Examples:

    >>> import numpy as np
    >>> ds = lm_dataset(np.arange(100), block_size=8, batch_size=2, shuffle=False, repeat=False)
    >>> x, y = next(iter(ds))
    >>> x.shape, bool((x[:, 1:] == y[:, :-1]).numpy().all())
    (TensorShape([2, 8]), True)
    """
    ids = np.asarray(ids, dtype=np.int32)
    windows = _windows(ids, block_size, stride or block_size)
    if windows is None or len(windows[0]) < batch_size:
        count = 0 if windows is None else len(windows[0])
        raise DataError(
            f"the {name} split has {len(ids)} tokens: {count} windows of {block_size + 1}, fewer "
            f"than one batch of {batch_size}; use more data, a smaller model.block_size or "
            "train.batch_size, or change data.val_fraction"
        )
    x, y = windows
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if max_batches:
        dataset = dataset.take(max_batches)
    return _no_autotune(dataset.prefetch(2))
