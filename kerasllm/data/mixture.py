"""Weighted mixtures of corpora: `[[data.sources]]`, each source its own token store.

    sources --weighted sample--> one tokenizer (shared by every store)
    source i --its own store--> its own train / val split (data.split, data.val_fraction)
    window position p --(seed, p // CYCLE)--> which source; its k-th window of that source
              --(seed, source, epoch)--> which window of the source's own shuffled stream

Training windows are dealt in cycles of `CYCLE` positions. Each cycle holds exactly
`round(CYCLE * weight / total)` windows of every source (largest remainders), in an order that is
a seeded permutation of the cycle alone, so the source of position `p` and how many windows of
that source came before it are computed from `p` without replaying anything before it: a run
resumed at batch `b` reads exactly the batches an uninterrupted run reads from `b` on. Each
source walks its own windows in a new order every epoch of that source, a pure function of
`(data.seed, source, epoch)`; a small source simply goes round more often than a big one.

A mixture of one source is exactly `data.dataset` = that source (same tokenizer, store and
batches).
"""

import dataclasses
import threading
import time

import numpy as np

from kerasllm.errors import DataError

CYCLE = 1 << 16  # window positions per cycle: weights are honoured to 1/65,536 in every cycle


def source_data(data, index):
    """The `DataConfig` of source `index` alone: its dataset and text field, the shared rest."""
    source = data.sources[index]
    return dataclasses.replace(data, dataset=source.dataset, text_field=source.text_field or data.text_field,
                               sources=[])


def quotas(weights, cycle=CYCLE):
    """Windows of each source in one cycle: `cycle * weight / total`, rounded by largest
    remainders, at least one each.

    Examples:

    >>> quotas([3.0, 1.0], cycle=8).tolist(), quotas([1.0, 1.0, 1.0], cycle=8).tolist()
    ([6, 2], [3, 3, 2])
    """
    weights = np.asarray(weights, np.float64)
    exact = cycle * weights / weights.sum()
    counts = np.maximum(np.floor(exact).astype(np.int64), 1)
    short = cycle - int(counts.sum())
    if short > 0:  # the largest remainders get one more (ties: the earlier source)
        order = np.argsort(-(exact - np.floor(exact)), kind="stable")
        counts[order[:short]] += 1
    return counts


class MixtureSchedule:
    """Which source each window position reads, and which window of that source.

    Args:
        windows: number of windows of each source (its epoch length).
        weights: relative weight of each source.
        seed: `data.seed`.
        shuffle: a new order of each source's windows every epoch of it (training); False
            walks them in order.
        cycle: window positions per cycle.

    Examples:

    >>> schedule = MixtureSchedule([10, 1000], [1.0, 3.0], seed=1, cycle=64)
    >>> sources, windows = schedule.lookup(0, 6400)
    >>> np.bincount(sources).tolist()
    [1600, 4800]
    >>> resumed = schedule.lookup(1000, 50)
    >>> bool((resumed[0] == sources[1000:1050]).all() and (resumed[1] == windows[1000:1050]).all())
    True
    """

    def __init__(self, windows, weights, seed, shuffle=True, cycle=CYCLE):
        self.windows = np.asarray(windows, np.int64)
        self.quotas = quotas(weights, cycle)
        self.cycle = int(self.quotas.sum())
        self.seed, self.shuffle = int(seed), shuffle
        self._cycles, self._orders = {}, {}
        self._lock = threading.Lock()

    def _cycle(self, index):
        """`(source, rank)` of each position of cycle `index`: rank = windows of the same source
        before it within the cycle."""
        if index not in self._cycles:
            labels = np.repeat(np.arange(len(self.quotas)), self.quotas)
            labels = np.random.default_rng([self.seed, 0x6D6978, index]).permutation(labels)
            order = np.argsort(labels, kind="stable")
            first = np.concatenate([[0], np.cumsum(self.quotas)[:-1]])
            ranks = np.empty(self.cycle, np.int64)
            ranks[order] = np.arange(self.cycle) - first[labels[order]]
            self._cycles = {index: (labels, ranks)}  # positions are read in order: one cycle held
        return self._cycles[index]

    def _order(self, source, epoch):
        """Source `source`'s window indices in epoch `epoch` of its stream."""
        key = (source, epoch)
        if key not in self._orders:
            n = int(self.windows[source])
            order = np.arange(n, dtype=np.int64)
            if self.shuffle:
                order = np.random.default_rng([self.seed, source, epoch]).permutation(order)
            # keep the two newest epochs of each source (a batch can straddle an epoch boundary)
            self._orders = {k: v for k, v in self._orders.items() if k[0] != source or k[1] >= epoch - 1}
            self._orders[key] = order
        return self._orders[key]

    def lookup(self, first, count):
        """`(sources, window indices)` of window positions `[first, first + count)`."""
        with self._lock:
            positions = np.arange(first, first + count, dtype=np.int64)
            sources = np.empty(count, np.int64)
            locals_ = np.empty(count, np.int64)
            cycles, offsets = np.divmod(positions, self.cycle)
            for index in np.unique(cycles):
                at = cycles == index
                labels, ranks = self._cycle(int(index))
                sources[at] = labels[offsets[at]]
                locals_[at] = index * self.quotas[sources[at]] + ranks[offsets[at]]
            windows = np.empty(count, np.int64)
            for source in np.unique(sources):
                at = sources == source
                epochs, within = np.divmod(locals_[at], self.windows[source])
                picked = np.empty(int(at.sum()), np.int64)
                for epoch in np.unique(epochs):
                    here = epochs == epoch
                    picked[here] = self._order(int(source), int(epoch))[within[here]]
                windows[at] = picked
            return sources, windows


class Mixture:
    """The splits of a mixture: one `TokenView` (or array) per source, and the weights.

    `len()` is the tokens of all sources together (for logs); batches come from
    `mixture_dataset`, not from `lm_dataset`.
    """

    def __init__(self, views, weights, names):
        self.views, self.weights, self.names = list(views), [float(w) for w in weights], list(names)
        self.dtype = np.result_type(*[view.dtype for view in self.views])

    def __len__(self):
        return int(sum(len(view) for view in self.views))

    def window_counts(self, block_size, stride, name):
        """Windows of `block_size + 1` ids at `stride` in each source; a source without one is an error."""
        counts = []
        for index, view in enumerate(self.views):
            count = (len(view) - block_size - 1) // stride + 1 if len(view) >= block_size + 1 else 0
            if count < 1:
                raise DataError(
                    f"data.sources[{index}].dataset = {self.names[index]!r}: its {name} split has {len(view)} "
                    f"tokens, not one window of {block_size + 1}; use more data, a smaller model.block_size "
                    "or change data.val_fraction"
                )
            counts.append(count)
        return counts

    def gather(self, sources, starts, length):
        """`(len(starts), length)` ids: at each row, the window of `length` ids of that source."""
        out = np.empty((len(starts), length), self.dtype)
        for source in np.unique(sources):
            rows = np.flatnonzero(sources == source)
            view = self.views[int(source)]
            if hasattr(view, "windows"):
                out[rows] = view.windows(starts[rows], length)
            else:
                out[rows] = np.stack([view[int(s):int(s) + length] for s in starts[rows]])
        return out


def _batches_dataset(load, first_batch, batches, rows, block_size, dtype):
    """`(inputs, targets)` of batches `first_batch, ...` (`batches`: how many, None: forever),
    each `load(batch)` -> `(rows, block_size + 1)` ids."""
    import tensorflow as tf

    from kerasllm.data.pipeline import _no_autotune

    end = np.iinfo(np.int64).max if batches is None else first_batch + batches
    dataset = tf.data.Dataset.range(first_batch, end)

    def gather(batch):
        windows = tf.numpy_function(load, [batch], tf.as_dtype(dtype), stateful=False)
        windows = tf.cast(tf.ensure_shape(windows, [rows, block_size + 1]), tf.int32)
        return windows[:, :-1], windows[:, 1:]

    dataset = dataset.map(gather)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(
        tf.data.INFINITE_CARDINALITY if batches is None else batches
    ))
    return _no_autotune(dataset.prefetch(2))


def _check_shards(batch_size, num_shards, shard_index):
    if batch_size % num_shards or not 0 <= shard_index < num_shards:
        raise DataError(
            f"batch size {batch_size} cannot be shared by {num_shards} workers (worker {shard_index}); "
            "expected a multiple of the worker count"
        )
    return batch_size // num_shards


def mixture_dataset(mixture, block_size, batch_size, stride=0, seed=1337, start_batch=0, num_shards=1,
                    shard_index=0):
    """The endless, shuffled training stream of a mixture: `(inputs, targets)` int32 batches.

    Args:
        mixture: a `Mixture` of the training splits.
        block_size, batch_size, stride: as `lm_dataset` (stride 0: `block_size`).
        seed: `data.seed`: the source of every window and each source's window order.
        start_batch: begin as if this many batches had been read (resuming): nothing before
            it is replayed, and the batches are those of an uninterrupted run.
        num_shards, shard_index: under `multi_worker`, this worker reads only its
            `batch_size // num_shards` rows of every global batch.

    Examples:

    >>> mixture = Mixture([np.arange(100), np.arange(1000, 1400)], [1.0, 1.0], ["a", "b"])
    >>> x, y = next(iter(mixture_dataset(mixture, block_size=8, batch_size=4, seed=3)))
    >>> x.shape, bool((x[:, 1:] == y[:, :-1]).numpy().all())
    (TensorShape([4, 8]), True)
    """
    stride = stride or block_size
    schedule = MixtureSchedule(mixture.window_counts(block_size, stride, "train"), mixture.weights, seed)
    rows = _check_shards(batch_size, num_shards, shard_index)

    def load(batch):
        sources, windows = schedule.lookup(int(batch) * batch_size + shard_index * rows, rows)
        return mixture.gather(sources, windows * stride, block_size + 1)

    return _batches_dataset(load, start_batch, None, rows, block_size, mixture.dtype)


def mixture_validation_dataset(mixture, block_size, batch_size, batches, seed=1337):
    """A fixed validation set of `batches` batches: each source contributes its weight's share
    of the windows, spread evenly over its whole validation split (not its first pages)."""
    mixture.window_counts(block_size, block_size, "validation")  # every split holds a window
    schedule = MixtureSchedule([1] * len(mixture.views), mixture.weights, seed, shuffle=False)
    sources, _ = schedule.lookup(0, batches * batch_size)
    starts = np.empty(len(sources), np.int64)
    for source, count in zip(*np.unique(sources, return_counts=True)):
        last = len(mixture.views[source]) - block_size - 1  # the last window start
        starts[sources == source] = np.arange(count) * (last + 1) // count

    def load(batch):
        at = slice(int(batch) * batch_size, (int(batch) + 1) * batch_size)
        return mixture.gather(sources[at], starts[at], block_size + 1)

    return _batches_dataset(load, 0, batches, batch_size, block_size, mixture.dtype)


def mixture_datasets(config, train_mixture, val_mixture):
    """`(train_ds(start_batch, num_shards, shard_index), val_ds)` of a pretraining run on a
    mixture (`kerasllm.training.run`)."""
    train, block = config.train, config.model.block_size
    val_ds = mixture_validation_dataset(val_mixture, block, train.batch_size, train.eval_steps, config.data.seed)

    def train_ds(start_batch, num_shards=1, shard_index=0):
        return mixture_dataset(
            train_mixture, block, train.batch_size // train.grad_accum_steps, stride=config.data.stride,
            seed=config.data.seed, start_batch=start_batch, num_shards=num_shards, shard_index=shard_index,
        )

    return train_ds, val_ds


# --- preparation -----------------------------------------------------------------------------
def check_sources(data):
    """Every source's dataset resolves to files, checked before any is read (an error names
    `data.sources[I].dataset`)."""
    from kerasllm.data.sources import iter_files

    for index, source in enumerate(data.sources):
        try:
            next(iter(iter_files(source.dataset)), None)
        except DataError as error:
            raise DataError(f"data.sources[{index}].dataset = {source.dataset!r}: {error}") from None


def train_mixture_tokenizer(data, log=print):
    """`data.tokenizer` trained on all sources, each in proportion to its weight.

    char: codepoint counts, each source's normalized to its share of the weight (one pass each);
    byte: nothing to learn; trained kinds: a seeded sample of `data.tokenizer_sample` MB, of
    which source i gives `weight_i / total` (a smaller source gives all it has).
    """
    from kerasllm.data.prepare import char_tokenizer_from_counts, corpus_pieces, sample_texts, tokenizer_options
    from kerasllm.tokenizers import get_tokenizer_class
    from kerasllm.tokenizers.base import count_codepoints

    options, kind = tokenizer_options(data), data.tokenizer
    shares = np.asarray([s.weight for s in data.sources]) / sum(s.weight for s in data.sources)
    if kind == "char":
        counts = np.zeros(0x110000, np.float64)
        for index, share in enumerate(shares):
            source_counts = count_codepoints(p.text for p in corpus_pieces(source_data(data, index)))
            counts += share * source_counts / max(1, source_counts.sum())
        return char_tokenizer_from_counts(counts, data.vocab_size, options["special_tokens"])
    cls = get_tokenizer_class(kind)
    if kind == "byte":
        return cls.train([], **options)
    started, sample = time.perf_counter(), []
    for index, share in enumerate(shares):
        budget = int(data.tokenizer_sample * 1e6 * share) if data.tokenizer_sample else 0
        sample += sample_texts(corpus_pieces(source_data(data, index)), budget, data.seed + index)
    if not sample:
        raise DataError(f"data.sources: no text to train the {kind} tokenizer on; expected text")
    log(f"data: training the {kind} tokenizer on a weighted sample of {sum(map(len, sample)) / 1e6:,.1f} M "
        f"characters from {len(shares)} sources ({time.perf_counter() - started:.1f} s to sample)")
    return cls.train(sample, vocab_size=data.vocab_size, **options)


def mixture_tokenizer(data, root, log=print):
    """`(tokenizer, how)`: from `<root>/tokenizers/mix-<key>` when trained before, else trained."""
    from kerasllm.data.prepare import cached_or_trained_tokenizer, source_signature

    sources = [(source_signature(s.dataset)[0], s.weight, s.text_field) for s in data.sources]
    return cached_or_trained_tokenizer(data, "mix", root, log, sources=sources, train=train_mixture_tokenizer)


def prepare_mixture(data, tokenizer=None, log=print):
    """Every source of `data.sources` into its own token store with one shared tokenizer, each
    split on its own.

    Returns:
        `PreparedData` whose `train_ids` and `val_ids` are `Mixture`s and `store` the list
        of stores; for a single source, exactly `prepare_lm_data` of that source.
    """
    from kerasllm.data.cache import cache_root
    from kerasllm.data.prepare import PreparedData, prepare_lm_data, prepare_store, split_store

    check_sources(data)
    if len(data.sources) == 1:
        return prepare_lm_data(source_data(data, 0), tokenizer=tokenizer, log=log)
    started, how = time.perf_counter(), "reused"
    if tokenizer is None:
        tokenizer, how = mixture_tokenizer(data, cache_root(data.cache_dir) if data.cache else None, log)
    stores, trains, vals = [], [], []
    for index, source in enumerate(data.sources):
        one = source_data(data, index)
        store, _, _, built = prepare_store(one, tokenizer, log)
        train, val = split_store(store, one)
        stores.append(store), trains.append(train), vals.append(val)
        log(f"data: source {index} {source.dataset} (weight {source.weight:g}) - {store.documents} documents, "
            f"{len(train):,} train / {len(val):,} val tokens ({'tokenized, cached' if built else 'token cache'})")
    weights, names = [s.weight for s in data.sources], [s.dataset for s in data.sources]
    log(f"data: a mixture of {len(stores)} sources, {tokenizer.kind} tokenizer with {tokenizer.vocabulary_size} ids "
        f"({how}), {time.perf_counter() - started:.1f} s")
    return PreparedData(tokenizer, Mixture(trains, weights, names), Mixture(vals, weights, names), stores)


def prepare_training_data(data, tokenizer=None, log=print):
    """The data of a pretraining run: `prepare_mixture` for `[[data.sources]]`, else
    `kerasllm.data.prepare.prepare_lm_data`."""
    if data.sources:
        return prepare_mixture(data, tokenizer, log)
    from kerasllm.data.prepare import prepare_lm_data

    return prepare_lm_data(data, tokenizer=tokenizer, log=log)
