"""The token store: a corpus tokenized once into memory-mapped shards of ids.

    <store>/tokenizer/tokenizer.json     the tokenizer the ids belong to
    <store>/shard-00000.bin              raw ids, uint16 (vocabulary < 65,536) or uint32
    <store>/shard-00000.docs             uint64 end offsets (within the shard) of the
                                         documents that end in this shard
    <store>/shard-00000.json             the shard's record: tokens, documents, bytes, max id
    <store>/sources.tsv                  every source file and its size in bytes
    <store>/index.json                   written last: dtype, totals, shard boundaries,
                                         tokenizer fingerprint, sources summary

Every file is written to a temporary name and renamed into place, and a shard counts as
written only once its `.json` record exists (renamed after its ids), so a preparer killed at
any moment leaves complete shards and stray temporary files, nothing half-written under a
real name. `index.json` comes last: a store without it is incomplete and is resumed from its
complete shards. `store_lock` serializes preparers of the same store (an `flock`).

Reading never loads a shard: `TokenStore.view(start, stop)` and `TokenStore.documents_view`
return `TokenView`s, logical 1-D id arrays over `np.memmap`s that `lm_dataset` gathers
windows from.
"""

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from kerasllm.errors import DataError

INDEX_FILE = "index.json"
SOURCES_FILE = "sources.tsv"
LOCK_FILE = ".lock"
STORE_VERSION = 2  # 2: shards record their largest id; plain text files are cut by byte ranges


def id_dtype(vocabulary_size):
    """The smallest unsigned dtype holding every id: uint16 up to 65,536 ids, else uint32."""
    return np.dtype(np.uint16 if vocabulary_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


def shard_name(index, suffix):
    return f"shard-{index:05d}.{suffix}"


def write_atomic(path, data):
    """Writes bytes (or an array's bytes) to `path` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data if isinstance(data, (bytes, bytearray)) else memoryview(np.ascontiguousarray(data)))
    tmp.replace(path)  # (no fsync: the rename protects against a killed process, not a power cut)


def write_json_atomic(path, payload):
    write_atomic(path, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def write_shard(directory, index, ids, doc_ends, text_bytes):
    """Writes one complete shard: ids, document ends, then the record that marks it done.

    Args:
        directory: the store folder.
        index: shard number.
        ids: 1-D array of ids in the store's dtype.
        doc_ends: end offsets (within the shard) of the documents ending here.
        text_bytes: UTF-8 bytes of text the shard was encoded from (for progress and stats).

    Returns:
        The shard's record (a dict), as also written to `shard-NNNNN.json`.
    """
    directory = Path(directory)
    write_atomic(directory / shard_name(index, "bin"), ids)
    write_atomic(directory / shard_name(index, "docs"), np.asarray(doc_ends, np.uint64))
    record = {"tokens": int(len(ids)), "documents": int(len(doc_ends)), "text_bytes": int(text_bytes),
              "max_id": int(ids.max()) if len(ids) else -1}  # checked on reuse instead of reading every id
    write_json_atomic(directory / shard_name(index, "json"), record)
    return record


def read_shard_record(directory, index, dtype):
    """The record of shard `index` if the shard is complete (record and sizes agree), else None."""
    directory = Path(directory)
    try:
        record = json.loads((directory / shard_name(index, "json")).read_text())
        ids_size = (directory / shard_name(index, "bin")).stat().st_size
        docs_size = (directory / shard_name(index, "docs")).stat().st_size
    except (OSError, ValueError):
        return None
    if ids_size != record["tokens"] * np.dtype(dtype).itemsize or docs_size != record["documents"] * 8:
        return None
    return record


def remove_temporary_files(directory):
    """Deletes what a killed writer left behind (`*.tmpPID`); call it under `store_lock`."""
    for path in Path(directory).glob("*.tmp*"):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def store_lock(directory):
    """Holds an exclusive lock on the store folder: a second preparer waits, then finds the
    store complete. Without `fcntl` (Windows) the atomic renames alone keep files whole."""
    # (lockf needs a file opened for writing: "a+")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        # A POSIX record lock, not flock: it belongs to this process alone, so forked workers
        # do not inherit it and it is released the moment this process dies (kill -9).
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def write_index(directory, dtype, vocabulary_size, fingerprint, records, sources, extra=None):
    """Writes `sources.tsv` and then `index.json`, which completes the store.

    Args:
        records: the shard records in shard order.
        sources: `(path, size)` pairs of every file read.
        extra: more JSON-serializable entries (settings, skipped files).
    """
    directory = Path(directory)
    lines = "".join(f"{path}\t{size}\n" for path, size in sources)
    write_atomic(directory / SOURCES_FILE, lines.encode("utf-8"))
    first = np.concatenate([[0], np.cumsum([r["tokens"] for r in records], dtype=np.int64)])
    index = {
        "version": STORE_VERSION,
        "dtype": np.dtype(dtype).name,
        "vocabulary_size": int(vocabulary_size),
        "tokenizer_fingerprint": fingerprint,
        "tokens": int(first[-1]),
        "documents": int(sum(r["documents"] for r in records)),
        "text_bytes": int(sum(r["text_bytes"] for r in records)),
        "shards": [
            {"file": shard_name(i, "bin"), "first_token": int(first[i]), **r} for i, r in enumerate(records)
        ],
        "sources": {"files": len(sources), "bytes": int(sum(size for _, size in sources)), "list": SOURCES_FILE},
        **(extra or {}),
    }
    write_json_atomic(directory / INDEX_FILE, index)
    return index


class TokenStore:
    """A complete store, opened read-only: shards as memmaps, document boundaries on demand.

    Examples:

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> rec = write_shard(folder, 0, np.arange(6, dtype=np.uint16), [2, 6], text_bytes=6)
    >>> _ = write_index(folder, np.uint16, 300, "f00", [rec], [("a.txt", 6)])
    >>> store = TokenStore(folder)
    >>> len(store), store.documents, store.view(1, 4)[:].tolist()
    (6, 2, [1, 2, 3])
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        path = self.directory / INDEX_FILE
        try:
            self.index = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: not a complete token store ({error}); prepare it again") from None
        self.dtype = np.dtype(self.index["dtype"])
        shards = self.index["shards"]
        self.shard_starts = np.array([s["first_token"] for s in shards] + [self.index["tokens"]], np.int64)
        self._maps = [None] * len(shards)

    def __len__(self):
        return int(self.index["tokens"])

    def problem(self, vocabulary_size):
        """Why this store cannot feed a model of `vocabulary_size` ids (a shard of the wrong
        size, or an id out of range), or None. The ids' range is each shard's recorded
        `max_id`; only a shard without one (an older store) is read, in chunks."""
        if self.index.get("vocabulary_size") not in (None, vocabulary_size):
            return f"built for {self.index['vocabulary_size']} token ids, the tokenizer has {vocabulary_size}"
        for i, shard in enumerate(self.index["shards"]):
            path = self.directory / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * self.dtype.itemsize:
                return f"{path}: missing or of the wrong size"
            top = shard.get("max_id")
            if top is None:
                ids = self.shard(i)
                top = max((int(ids[a:a + (1 << 24)].max()) for a in range(0, len(ids), 1 << 24)), default=-1)
            if top >= vocabulary_size:
                return f"{path}: holds id {top}, outside the tokenizer's {vocabulary_size} ids"
        return None

    @property
    def documents(self):
        return int(self.index["documents"])

    def shard(self, i):
        """Shard `i` as a read-only memmap (opened on first use)."""
        if self._maps[i] is None:
            count = self.index["shards"][i]["tokens"]
            path = self.directory / self.index["shards"][i]["file"]
            self._maps[i] = (
                np.memmap(path, dtype=self.dtype, mode="r", shape=(count,)) if count else np.zeros([0], self.dtype)
            )
        return self._maps[i]

    def read(self, start, length):
        """Ids `[start, start + length)` of the whole store, across shard boundaries."""
        out, position, end = [], start, start + length
        i = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        while position < end:
            local = position - self.shard_starts[i]
            take = min(end, self.shard_starts[i + 1]) - position
            out.append(self.shard(i)[local : local + take])
            position += take
            i += 1
        return out[0] if len(out) == 1 else np.concatenate(out)

    def document_ends(self):
        """Global end offsets of every document, in order (int64, one per document)."""
        parts = [
            np.fromfile(self.directory / shard_name(i, "docs"), dtype=np.uint64).astype(np.int64) + first
            for i, first in enumerate(self.shard_starts[:-1])
        ]
        return np.concatenate(parts) if parts else np.zeros([0], np.int64)

    def view(self, start=0, stop=None):
        """A `TokenView` of ids `[start, stop)`."""
        stop = len(self) if stop is None else stop
        return TokenView(self, np.array([start], np.int64), np.array([stop - start], np.int64))

    def documents_view(self, mask):
        """A `TokenView` of the documents where `mask` (one bool per document) is true."""
        ends = self.document_ends()
        starts = np.concatenate([[0], ends[:-1]])
        mask = np.asarray(mask, bool)
        # Runs of consecutive chosen documents become one segment each.
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
        first, last = edges[0::2], edges[1::2] - 1
        return TokenView(self, starts[first], ends[last] - starts[first])


class TokenView:
    """A read-only 1-D id array made of segments of a `TokenStore` (no copy in memory).

    Supports `len`, slicing (`view[a:b]`, a numpy array), `np.asarray(view)` (materializes
    it: only for small views) and `windows(starts, length)`, which `lm_dataset` uses.
    """

    def __init__(self, store, starts, lengths):
        self.store = store
        self.starts = np.asarray(starts, np.int64)  # global store offsets of the segments
        self.lengths = np.asarray(lengths, np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])  # view offsets of the segments
        self.dtype = store.dtype

    def __len__(self):
        return int(self.offsets[-1])

    @property
    def shape(self):
        return (len(self),)

    def read(self, start, length):
        """Ids `[start, start + length)` of the view."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"ids [{start}, {start + length}) outside a view of {len(self)}")
        out, position, end = [], start, start + length
        s = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while position < end:
            local = position - self.offsets[s]
            take = min(end, self.offsets[s + 1]) - position
            out.append(self.store.read(int(self.starts[s] + local), int(take)))
            position += take
            s += 1
        if not out:
            return np.zeros([0], self.dtype)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a TokenView supports contiguous slices only, e.g. view[a:b]")
        start, stop, _ = key.indices(len(self))
        return np.array(self.read(start, max(0, stop - start)))

    def __array__(self, dtype=None, copy=None):
        ids = self[:]
        return ids.astype(dtype) if dtype is not None else ids

    def windows(self, starts, length):
        """`(len(starts), length)` ids: the window of `length` ids at each start."""
        starts = np.asarray(starts, np.int64)
        out = np.empty((len(starts), length), self.dtype)
        for row, start in enumerate(starts):
            out[row] = self.read(int(start), length)
        return out
