"""The data stage of a pretraining run: stream the corpus into a token store, split it.

    sources --(sample / count pass)--> tokenizer (cached)
    sources --pieces--> shards of ~data.shard_mb MB of text --data.num_proc workers--> store
    store --position or document split--> train / val `TokenView`s (memory-mapped)

Memory stays bounded whatever the corpus size: the corpus is read as a stream of pieces,
trained tokenizers learn from a seeded sample of at most `data.tokenizer_sample` MB, and each
worker holds one shard at a time. The store lives in the cache under a key of the source files
(paths, sizes, modification times), the text settings and the tokenizer fingerprint; a
complete store is reused, an incomplete one (a killed run) resumes from its complete shards
and ends byte-identical to an uninterrupted run's.
"""

import atexit
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import heapq
import json
import multiprocessing
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from kerasllm.data.cache import cache_root
from kerasllm.data.cleaning import clean_text, parse_steps
from kerasllm.data.sources import Piece, SourceStats, TextRange, iter_files, iter_items, iter_pieces, read_range
from kerasllm.data.store import (
    INDEX_FILE,
    STORE_VERSION,
    TokenStore,
    id_dtype,
    read_shard_record,
    remove_temporary_files,
    store_lock,
    write_index,
    write_shard,
)
from kerasllm.errors import DataError
from kerasllm.tokenizers import CharTokenizer, get_tokenizer_class, load_tokenizer
from kerasllm.tokenizers.base import DEFAULT_SPECIAL_TOKENS, codepoint_counts

STORE_TOKENIZER_DIR = "tokenizer"


@dataclasses.dataclass
class PreparedData:
    """The tokenizer and the two splits: `TokenView`s over the store (or arrays)."""

    tokenizer: object
    train_ids: object
    val_ids: object
    store: object = None


def special_tokens(data):
    """`<pad>, <unk>, <bos>, <eos>` followed by the user's `data.special_tokens`."""
    extra = [t.strip() for t in data.special_tokens.split(",") if t.strip()]
    return [*DEFAULT_SPECIAL_TOKENS, *(t for t in extra if t not in DEFAULT_SPECIAL_TOKENS)]


def tokenizer_options(data):
    """Training options of `data.tokenizer` taken from the `[data]` config."""
    return {
        "special_tokens": special_tokens(data),
        "min_count": data.min_count,
        "model_type": data.sp_model,
        "seed": data.seed,
    }


def _digest(payload):
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_signature(spec):
    """`(hash, total bytes, files)` of the corpus files: paths, sizes and modification times."""
    digest, total, count = hashlib.sha256(), 0, 0
    for path in iter_files(spec):
        stat = path.stat()
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        total, count = total + stat.st_size, count + 1
    return digest.hexdigest()[:16], total, count


def corpus_pieces(data, stats=None):
    """The corpus of `data.dataset` as pieces, after `data.clean` (dedupe: whole documents)."""
    steps = parse_steps(data.clean)
    seen = set()
    for piece in iter_pieces(data.dataset, data.text_field, data.on_error, stats):
        if not steps:
            yield piece
            continue
        text = clean_text(piece.text, steps)
        whole = piece.first and piece.last
        if whole:
            if not text.strip():
                continue
            if "dedupe" in steps:
                key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
                if key in seen:
                    continue
                seen.add(key)
        elif piece.text.endswith("\n") and text and not text.endswith("\n"):
            text += "\n"  # a piece of a long document keeps the line break it was cut at
        yield Piece(text, piece.first, piece.last)


def corpus_items(data, stats=None, range_bytes=None):
    """The corpus as the units of work read: plain text files as `TextRange`s that the
    workers read themselves (no text through pipes), the rest as pieces. Cleaning and
    `on_error = "skip"` need the text in this process, so they read everything as pieces."""
    if parse_steps(data.clean) or data.on_error != "raise":
        return corpus_pieces(data, stats)
    return iter_items(data.dataset, data.text_field, data.on_error, stats, range_bytes or shard_bytes(data))


def shard_bytes(data):
    return max(1, int(data.shard_mb * 1e6))


def item_text(item):
    """`(text, UTF-8 bytes or None)` of a piece or a `TextRange`; "" for a range that is a
    whole blank file (no document, as `iter_pieces` gives none)."""
    if isinstance(item, TextRange):
        text, size = read_range(item)
        return ("", 0) if item.first and item.last and not text.strip() else (text, size)
    return item.text, None


# --- the tokenizer ---------------------------------------------------------------------------
def sample_texts(pieces, budget_chars, seed):
    """A seeded uniform sample of whole pieces, at most `budget_chars` characters, in order.

    Each piece gets a random key from `seed` and its position; the pieces with the smallest
    keys that fit the budget are kept (a bounded heap), so the sample spans the whole corpus
    and memory never exceeds the budget. `budget_chars <= 0` keeps everything.

    Examples:

    >>> texts = [Piece(f"{i:04d}", True, True) for i in range(100)]
    >>> sample = sample_texts(texts, 80, seed=1)
    >>> len(sample), sample == sample_texts(texts, 80, seed=1), sample == sorted(sample)
    (20, True, True)
    """
    if budget_chars <= 0:
        return [p.text for p in pieces if p.text]
    rng, heap, size = random.Random(seed), [], 0
    for position, piece in enumerate(pieces):
        key = rng.random()
        if not piece.text or len(piece.text) > budget_chars:
            continue
        heapq.heappush(heap, (-key, position, piece.text))
        size += len(piece.text)
        while size > budget_chars:
            size -= len(heapq.heappop(heap)[2])
    return [text for _, _, text in sorted(heap, key=lambda item: item[1])]


def char_tokenizer_from_counts(counts, vocab_size, specials):
    """The `CharTokenizer` that `CharTokenizer.train` builds from text with these counts."""
    seen = np.flatnonzero(counts)
    if vocab_size:
        keep = max(vocab_size - len(specials), 0)
        order = np.lexsort((seen, -counts[seen]))[:keep]  # by count, then codepoint
        seen = seen[order]
    return CharTokenizer([chr(c) for c in seen], special_tokens=specials)


def train_tokenizer(data, log=print):
    """Trains `data.tokenizer` on the corpus: a count pass (char), nothing (byte), else a sample."""
    options = tokenizer_options(data)
    kind = data.tokenizer
    cls = get_tokenizer_class(kind)
    if kind == "char":
        counts = np.zeros(0x110000, np.int64)
        unit = max(1, shard_bytes(data) // 4)  # smaller than shards: the workers end together
        for seen, count in map_units(_count_job, iter_units(corpus_items(data, range_bytes=unit), unit), num_workers(data)):
            counts[seen] += count
        return char_tokenizer_from_counts(counts, data.vocab_size, options["special_tokens"])
    if kind == "byte":
        return cls.train([], **options)
    started = time.perf_counter()
    sample = sample_texts(corpus_pieces(data), int(data.tokenizer_sample * 1e6), data.seed)
    if not sample:
        raise DataError(f"{data.dataset}: no text to train the {kind} tokenizer on; expected text")
    log(f"data: training the {kind} tokenizer on a sample of {sum(map(len, sample)) / 1e6:,.1f} M characters "
        f"({len(sample):,} pieces, {time.perf_counter() - started:.1f} s to sample)")
    return cls.train(sample, vocab_size=data.vocab_size, **options)


def cached_or_trained_tokenizer(data, signature, root, log=print, sources=None, train=None):
    """`(tokenizer, how)`: from `<root>/tokenizers/<signature>-<key>` when trained before, else
    trained by `train(data, log)` (default `train_tokenizer`); `sources` (default `signature`)
    is what the key records of the text it learns from."""
    key = _digest({
        "sources": signature if sources is None else sources, "kind": data.tokenizer, "vocab_size": data.vocab_size,
        "options": tokenizer_options(data), "sample": data.tokenizer_sample, "text_field": data.text_field,
        "clean": data.clean, "on_error": data.on_error,
    })
    folder = root / "tokenizers" / f"{signature}-{key}" if root else None
    if folder is not None and (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder), "from cache"
    tokenizer = (train or train_tokenizer)(data, log)
    if folder is not None:
        tokenizer.save(folder)
    return tokenizer, "trained"


# --- the store -------------------------------------------------------------------------------
def iter_units(pieces, shard_chars):
    """Groups pieces (and text ranges) into shards of about `shard_chars` characters (bytes
    for ranges): a pure function of the corpus, so a resumed run cuts the same shards."""
    unit, size = [], 0
    for piece in pieces:
        unit.append(piece)
        size += piece.stop - piece.start if isinstance(piece, TextRange) else len(piece.text)
        if size >= shard_chars:
            yield unit
            unit, size = [], 0
    if unit:
        yield unit


_WORKER = {}


def _init_worker(directory=None, add_bos=False):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: no Rust thread pool
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    if directory is not None:
        tokenizer = load_tokenizer(os.path.join(directory, STORE_TOKENIZER_DIR))
        _WORKER.update(directory=directory, tokenizer=tokenizer, add_bos=add_bos)


def _exit_with_parent(parent):
    """A worker whose preparer died (kill -9) exits instead of lingering as an orphan."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _encode_job(job):
    index, pieces = job
    return encode_shard(_WORKER["directory"], index, pieces, _WORKER["tokenizer"], _WORKER["add_bos"])


def _count_job(items):
    """`(codepoints seen, their counts)` in a unit's text (sparse: what crosses the pipe is small)."""
    counts = codepoint_counts("".join(item_text(item)[0] for item in items))
    seen = np.flatnonzero(counts)
    return seen, counts[seen]


def num_workers(data):
    return data.num_proc or os.cpu_count() or 1


@contextlib.contextmanager
def one_core_if(single):
    """With `single`, Hugging Face `tokenizers` (BPE, WordPiece, Unigram) trains and encodes on
    this thread alone, as the workers always do: `data.num_proc = 1` uses one core."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    if single:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by tokenizers at every call
    try:
        yield
    finally:
        if single and saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        elif single:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def map_units(job, units, num_proc):
    """`job(unit)` of every unit, in order: in this process, or in `num_proc` forked workers
    with a bounded read-ahead of units."""
    if num_proc <= 1:
        yield from map(job, units)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    pending = collections.deque()
    with concurrent.futures.ProcessPoolExecutor(num_proc, mp_context=context, initializer=_init_worker) as pool:
        for unit in units:
            pending.append(pool.submit(job, unit))
            while len(pending) >= 2 * num_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def encode_shard(directory, index, items, tokenizer, add_bos=False):
    """Encodes one shard's pieces and text ranges (`<bos>` where a document starts, `<eos>`
    where it ends) and writes the shard; returns its record."""
    dtype = id_dtype(tokenizer.vocabulary_size)
    bos, eos = np.array([tokenizer.bos_id], dtype), np.array([tokenizer.eos_id], dtype)
    parts, ends, position, text_bytes = [], [], 0, 0
    for item in items:
        text, size = item_text(item)
        if not text and item.first and item.last and isinstance(item, TextRange):
            continue  # a blank file is no document
        if item.first and add_bos:
            parts.append(bos)
            position += 1
        if text:
            parts.append(tokenizer.encode(text).astype(dtype))
            position += len(parts[-1])
            text_bytes += len(text.encode("utf-8")) if size is None else size
        if item.last:
            parts.append(eos)
            position += 1
            ends.append(position)
    ids = np.concatenate(parts) if parts else np.zeros([0], dtype)
    return write_shard(directory, index, ids, ends, text_bytes)


class Progress:
    """Prints MB read, tokens written, MB/s and ETA every few seconds, and once at the end."""

    def __init__(self, total_bytes, log, every=5.0):
        self.total, self.log, self.every = max(total_bytes, 1), log, every
        self.started = self.last = time.perf_counter()
        self.tokens = 0

    def update(self, bytes_done, tokens, final=False):
        self.tokens += tokens
        now = time.perf_counter()
        if not final and now - self.last < self.every:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        rate = bytes_done / elapsed
        eta = (self.total - bytes_done) / rate if rate and not final else 0.0
        self.log(
            f"prepare: {bytes_done / 1e6:,.1f} / {self.total / 1e6:,.1f} MB read, {self.tokens:,} tokens written, "
            f"{rate / 1e6:,.1f} MB/s, " + (f"ETA {eta:,.0f} s" if not final else f"done in {elapsed:,.1f} s")
        )


def _pool(num_proc, directory, tokenizer, add_bos):
    # fork shares the parent's pages and starts at once; tokenizers that encode with TF ops
    # get fresh (spawned) processes, since TensorFlow does not survive a fork.
    method = "spawn" if tokenizer.encode_in_graph or "fork" not in multiprocessing.get_all_start_methods() else "fork"
    return concurrent.futures.ProcessPoolExecutor(
        num_proc, mp_context=multiprocessing.get_context(method), initializer=_init_worker,
        initargs=(str(directory), add_bos),
    )


def build_store(directory, data, tokenizer, total_bytes=0, log=print):
    """Tokenizes the corpus of `data` into a token store at `directory` (resuming a partial one).

    Returns:
        `(TokenStore, built)`: `built` is False when the store was already complete.
    """
    with store_lock(directory):
        if (directory / INDEX_FILE).is_file():
            store = TokenStore(directory)
            problem = store.problem(tokenizer.vocabulary_size)
            if problem is None:
                return store, False
            log(f"data: the token store is damaged ({problem}); building it again")
            shutil.rmtree(directory)
            directory.mkdir(parents=True)
        remove_temporary_files(directory)
        tokenizer.save(directory / STORE_TOKENIZER_DIR)
        dtype = id_dtype(tokenizer.vocabulary_size)
        num_proc = num_workers(data)
        stats, progress = SourceStats(), Progress(total_bytes, log)
        records, pending, resumed = {}, collections.deque(), 0
        units = iter_units(corpus_items(data, stats), shard_bytes(data))
        pool = _pool(num_proc, directory, tokenizer, data.add_bos) if num_proc > 1 else None
        try:
            for index, unit in enumerate(units):
                record = read_shard_record(directory, index, dtype)
                if record is not None:  # written by an earlier, interrupted run
                    records[index], resumed = record, resumed + 1
                    progress.update(stats.bytes_done, record["tokens"])
                elif pool is None:
                    records[index] = encode_shard(directory, index, unit, tokenizer, data.add_bos)
                    progress.update(stats.bytes_done, records[index]["tokens"])
                else:
                    pending.append((index, pool.submit(_encode_job, (index, unit))))
                    while len(pending) >= 2 * num_proc:  # bounded read-ahead
                        _collect(pending, records, progress, stats)
            while pending:
                _collect(pending, records, progress, stats)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        ordered = [records[i] for i in range(len(records))]
        progress.update(stats.bytes_done, 0, final=True)
        if resumed:
            log(f"prepare: resumed, {resumed} of {len(ordered)} shards were complete")
        extra = {"skipped": len(stats.skipped), "skipped_first": stats.skipped[:100],
                 "add_bos": data.add_bos, "tokenizer_kind": tokenizer.kind}
        write_index(directory, dtype, tokenizer.vocabulary_size, tokenizer.fingerprint(), ordered, stats.files, extra)
    return TokenStore(directory), True


def _collect(pending, records, progress, stats):
    index, future = pending.popleft()
    records[index] = future.result()
    progress.update(stats.bytes_done, records[index]["tokens"])


def store_directory(data, signature, tokenizer, root):
    """`<root>/stores/<sources>-<text settings>-<tokenizer fingerprint>`."""
    settings = _digest({"text_field": data.text_field, "clean": data.clean, "add_bos": data.add_bos,
                        "shard_mb": data.shard_mb, "on_error": data.on_error, "version": STORE_VERSION})
    return root / "stores" / f"{signature}-{settings}-{tokenizer.fingerprint()}"


def split_store(store, data):
    """`(train, val)` views: the last `val_fraction` of the tokens ("position"), or whole
    documents chosen with `data.seed` ("document"). Neither copies the store."""
    if not 0.0 < data.val_fraction < 1.0:
        raise DataError(f"data.val_fraction = {data.val_fraction}: expected a number between 0 and 1")
    if data.split == "position":
        cut = int(round(len(store) * (1.0 - data.val_fraction)))
        return store.view(0, cut), store.view(cut, len(store))
    if data.split != "document":
        raise DataError(f"data.split = {data.split!r}: expected 'position' or 'document'")
    n = store.documents
    if n < 2:
        raise DataError(f"data.split = 'document' needs at least 2 documents, got {n}; use data.split = 'position'")
    order = np.random.default_rng(data.seed).permutation(n)
    val = np.zeros(n, bool)
    val[order[: min(max(1, round(data.val_fraction * n)), n - 1)]] = True
    return store.documents_view(~val), store.documents_view(val)


def _scratch_root():
    folder = tempfile.mkdtemp(prefix="kerasllm-store-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder)


def prepare_store(data, tokenizer=None, log=print):
    """`(store, tokenizer, how the tokenizer came, whether the store was built)` for `data`."""
    signature, total_bytes, _ = source_signature(data.dataset)
    root = cache_root(data.cache_dir) if data.cache else None
    how = "reused"
    with one_core_if(num_workers(data) == 1):
        if tokenizer is None:
            tokenizer, how = cached_or_trained_tokenizer(data, signature, root, log)
        directory = store_directory(data, signature, tokenizer, root or _scratch_root())
        store, built = build_store(directory, data, tokenizer, total_bytes, log)
    if store.index.get("skipped"):
        first = store.index["skipped_first"][0]
        log(f"data: skipped {store.index['skipped']} bad files or rows (data.on_error = 'skip'); first: {first}")
    if not store.documents:
        raise DataError(f"{data.dataset}: {_why_no_text(data, total_bytes)}; expected text to train on")
    return store, tokenizer, how, built


def _why_no_text(data, total_bytes):
    if data.clean:
        return f"no text after cleaning with data.clean = {data.clean!r}"
    if total_bytes == 0:
        return "the file is empty" if Path(data.dataset).is_file() else "every file is empty"
    return "only whitespace, no text"


def prepare_lm_data(data, tokenizer=None, log=print):
    """Corpus -> (tokenizer, train ids, val ids) as a `DataConfig` says, through the token store.

    Args:
        data: a `kerasllm.config.DataConfig`.
        tokenizer: reuse this tokenizer (a resumed run) instead of training one.
        log: progress printer.

    Returns:
        `PreparedData`; `train_ids` and `val_ids` are `TokenView`s over the memory-mapped
        shards of the store (in the cache, or in a temporary folder with `data.cache = false`).
    """
    started = time.perf_counter()
    store, tokenizer, how, built = prepare_store(data, tokenizer, log)
    train_ids, val_ids = split_store(store, data)
    ids_from = "tokenized, cached" if built else "token cache"
    log(
        f"data: {data.dataset} - {store.documents} documents, {len(train_ids):,} train / "
        f"{len(val_ids):,} val tokens ({ids_from}), {tokenizer.kind} tokenizer with "
        f"{tokenizer.vocabulary_size} ids ({how}), {time.perf_counter() - started:.1f} s; store {store.directory}"
    )
    return PreparedData(tokenizer, train_ids, val_ids, store)
