"""From documents to `tf.data` batches: language-model windows and classification batches.

    documents --split--> train/val documents --tokenize (once, cached on disk)--> one id array
              (optional <bos> before and <eos> after each document)
              --window starts (shuffled per epoch from the seed)--> batch of starts
              --gather block_size + 1 ids per start--> (x, y = x shifted by one) --> prefetch

The id array stays in its compact dtype (uint16 for vocabularies under 65,536) and is held
once; windows are gathered per batch, so overlapping windows (`stride < block_size`) cost no
memory. The order is a pure function of (seed, epoch), so a run resumed at step k is fed
exactly the batches an uninterrupted run would have seen from step k on (`start_batch`).
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


def id_dtype(vocabulary_size):
    """The smallest unsigned dtype holding every id: uint16 below 65,536 ids, else uint32."""
    return np.uint16 if vocabulary_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def iter_encoded(tokenizer, documents, add_bos=False, add_eos=True, chunk=64):
    """Yields one id array per document (with <bos>/<eos> when asked), encoding in chunks."""
    bos = np.array([tokenizer.bos_id], np.int32)
    eos = np.array([tokenizer.eos_id], np.int32)
    for start in range(0, len(documents), chunk):
        for ids in tokenizer.encode_batch(documents[start : start + chunk]):
            parts = ([bos] if add_bos else []) + [np.asarray(ids, np.int32)] + ([eos] if add_eos else [])
            yield np.concatenate(parts)


def encode_documents(tokenizer, documents, add_eos=True, add_bos=False):
    """Tokenizes documents into one id array, with `<eos>` after (and `<bos>` before) each.

    Examples:

    >>> from kerasllm.tokenizers import CharTokenizer
    >>> tok = CharTokenizer.train(["ab"])
    >>> encode_documents(tok, ["ab", "b"]).tolist()
    [4, 5, 3, 5, 3]
    """
    parts = list(iter_encoded(tokenizer, documents, add_bos=add_bos, add_eos=add_eos))
    dtype = id_dtype(tokenizer.vocabulary_size)
    return np.concatenate(parts).astype(dtype) if parts else np.zeros([0], dtype)


def _no_autotune(dataset):
    # The tf.data autotuner can stall iterator teardown (and so fit()'s return) for up to a
    # minute on small CPUs; the pipeline below needs no tuning, so it is switched off.
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return dataset.with_options(options)


def _window_starts(n_windows, stride, shuffle, repeat, seed, start_batch, batch_size):
    """Dataset of window start offsets: per-epoch permutations from (seed, epoch), resumable."""
    first = start_batch * batch_size  # windows already consumed
    epoch0, skip = divmod(first, n_windows)
    if not repeat and epoch0 > 0:
        epoch0, skip = 1, 0  # past the only epoch: empty
    epochs = tf.data.Dataset.range(epoch0, np.iinfo(np.int64).max if repeat else 1)

    def one_epoch(epoch):
        order = tf.range(n_windows, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order * stride)

    return epochs.flat_map(one_epoch).skip(skip)


def _array_gather(ids, block_size):
    """Windows from an in-memory array, held once as a constant in its compact dtype."""
    tokens = tf.constant(ids)
    offsets = tf.range(block_size + 1, dtype=tf.int64)

    def gather(starts):
        windows = tf.cast(tf.gather(tokens, starts[:, None] + offsets[None, :]), tf.int32)
        return windows[:, :-1], windows[:, 1:]

    return gather


def _view_gather(view, block_size, batch_size):
    """Windows read from the memory-mapped shards of a `TokenView`, one batch at a time."""
    dtype = tf.as_dtype(view.dtype)

    def gather(starts):
        windows = tf.numpy_function(lambda s: view.windows(s, block_size + 1), [starts], dtype, stateful=False)
        windows = tf.cast(tf.ensure_shape(windows, [batch_size, block_size + 1]), tf.int32)
        return windows[:, :-1], windows[:, 1:]

    return gather


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
    start_batch=0,
    num_shards=1,
    shard_index=0,
):
    """A dataset of `(inputs, targets)` int32 batches of shape `(batch_size, block_size)`.

    Args:
        ids: 1-D token ids: a numpy array (held in memory) or a `kerasllm.data.store.TokenView`
            of the token store (windows are read from its memory-mapped shards per batch).
        block_size: window length; each window is read from `block_size + 1` ids.
        batch_size: sequences per batch (incomplete last batches are dropped).
        stride: step between window starts; 0 means `block_size` (windows do not overlap).
        shuffle: a new order of the windows every epoch, a pure function of `(seed, epoch)`.
        repeat: repeat forever (training) or stop after one pass (evaluation).
        seed: shuffle seed.
        max_batches: stop after this many batches (a fixed validation set).
        name: split name used in error messages.
        start_batch: begin as if this many batches had been read already (resuming at a
            step): the following batches are exactly those of an uninterrupted pass, and
            getting there costs at most one epoch of integer offsets, not the batches.
        num_shards, shard_index: under `multi_worker`, the worker count and this worker's
            index. `batch_size` stays the global batch; each worker reads only its
            `batch_size // num_shards` rows of every global batch (tf.data auto-sharding is
            turned off), so together the workers see exactly the single-worker batches.

    Examples:

    >>> import numpy as np
    >>> ds = lm_dataset(np.arange(100), block_size=8, batch_size=2, shuffle=False, repeat=False)
    >>> x, y = next(iter(ds))
    >>> x.shape, bool((x[:, 1:] == y[:, :-1]).numpy().all())
    (TensorShape([2, 8]), True)
    """
    view = hasattr(ids, "windows")  # a TokenView over memory-mapped shards: never loaded whole
    if not view:
        ids = np.asarray(ids)
        if ids.dtype not in (np.uint16, np.uint32, np.int32):
            ids = ids.astype(np.int32)
    stride = stride or block_size
    count = (len(ids) - block_size - 1) // stride + 1 if len(ids) >= block_size + 1 else 0
    if count < batch_size:
        raise DataError(
            f"the {name} split has {len(ids)} tokens: {count} windows of {block_size + 1}, fewer "
            f"than one batch of {batch_size}; use more data, a smaller model.block_size or "
            "train.batch_size, or change data.val_fraction"
        )
    if batch_size % num_shards or not 0 <= shard_index < num_shards:
        raise DataError(
            f"batch size {batch_size} cannot be shared by {num_shards} workers (worker {shard_index}); "
            "expected a multiple of the worker count"
        )
    rows = batch_size // num_shards
    gather = _view_gather(ids, block_size, rows) if view else _array_gather(ids, block_size)
    dataset = _window_starts(count, stride, shuffle, repeat, seed, start_batch, batch_size)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if num_shards > 1:  # this worker's rows of each global batch
        dataset = dataset.map(lambda starts: starts[shard_index * rows : (shard_index + 1) * rows])
    # flat_map hides the length from tf.data; state it so Keras sees an endless / sized input.
    remaining = max(0, count - start_batch * batch_size) // batch_size
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(
        tf.data.INFINITE_CARDINALITY if repeat else remaining
    ))
    if max_batches:
        dataset = dataset.take(max_batches)
    dataset = dataset.map(gather)
    dataset = _no_autotune(dataset.prefetch(2))
    if num_shards > 1:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        dataset = dataset.with_options(options)
    return dataset


def per_worker_dataset(strategy, make):
    """The training stream under a multi-worker strategy, each worker building only its rows.

    `make(num_shards, shard_index)` returns the dataset of one replica's share of every
    global batch (`lm_dataset(..., num_shards=, shard_index=)`); each worker makes those of
    its own replicas (`strategy.distribute_datasets_from_function`), so no worker gathers the
    windows of another's rows, and together they read exactly the single-worker batches.
    """
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(context):
        local = replicas // context.num_input_pipelines  # replicas on this worker
        first = context.input_pipeline_id * local
        parts = [make(replicas, first + j) for j in range(local)]
        if local == 1:
            return parts[0]
        # one element per local replica per step, in replica order
        return tf.data.Dataset.choose_from_datasets(parts, tf.data.Dataset.range(local).repeat())

    return strategy.distribute_datasets_from_function(dataset_fn)


def pad_sequences(sequences, max_length, pad_id=0):
    """Truncates/pads id sequences to `(len(sequences), max_length)` int32 ids and a bool mask.

    Examples:

    >>> ids, mask = pad_sequences([[5, 6, 7], [8]], max_length=2)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [8, 0]], [[True, True], [True, False]])
    """
    ids = np.full((len(sequences), max_length), pad_id, dtype=np.int32)
    mask = np.zeros((len(sequences), max_length), dtype=bool)
    for row, sequence in enumerate(sequences):
        sequence = np.asarray(sequence, np.int32)[:max_length]
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = True
    return ids, mask


def classification_dataset(
    sequences, labels, batch_size, max_length, pad_id=0, shuffle=True, repeat=False, seed=1337,
    drop_remainder=False,
):
    """Batches of `({"token_ids", "padding_mask"}, labels)` for classification.

    Args:
        sequences: list of id sequences (e.g. `tokenizer.encode_batch(texts)`).
        labels: integer class ids, one per sequence.
        batch_size: examples per batch.
        max_length: every sequence is truncated / right-padded with `pad_id` to this length.
        shuffle: a new order each epoch from `seed` (deterministic).
        repeat: repeat forever.
        drop_remainder: drop the last incomplete batch.

    Examples:

    >>> ds = classification_dataset([[5, 6, 7], [8]], [1, 0], batch_size=2, max_length=4, shuffle=False)
    >>> inputs, y = next(iter(ds))
    >>> inputs["token_ids"].numpy().tolist(), int(inputs["padding_mask"].numpy().sum()), y.numpy().tolist()
    ([[5, 6, 7, 0], [8, 0, 0, 0]], 4, [1, 0])
    """
    if len(sequences) != len(labels):
        raise DataError(f"{len(sequences)} sequences but {len(labels)} labels; expected one label each")
    if not len(sequences):
        raise DataError("no examples to batch; expected at least one labelled text")
    ids, mask = pad_sequences(sequences, max_length, pad_id)
    dataset = tf.data.Dataset.from_tensor_slices(
        ({"token_ids": ids, "padding_mask": mask}, np.asarray(labels, dtype=np.int32))
    )
    if shuffle:
        dataset = dataset.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return _no_autotune(dataset.prefetch(2))
