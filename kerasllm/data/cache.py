"""On-disk caches: token ids (keyed by corpus hash + tokenizer hash) and trained tokenizers.

    <cache root>/tokens/<corpus hash>-<tokenizer fingerprint>-<bos/eos flags>.bin  (+ .json)
    <cache root>/tokenizers/<corpus hash>-<kind and options hash>/tokenizer.json

The cache root is `data.cache_dir`, else `$KERASLLM_CACHE_DIR`, else
`~/.keras/kerasllm/cache`. Token ids are written document by document to a raw uint16/uint32
file (never the whole corpus twice in memory), renamed into place when complete, and read
back as a read-only `np.memmap`, so a warm run costs a hash of the text and no tokenization.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from kerasllm.data.pipeline import id_dtype, iter_encoded
from kerasllm.tokenizers import get_tokenizer_class, load_tokenizer


def cache_root(cache_dir=""):
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("KERASLLM_CACHE_DIR"):
        return Path(os.environ["KERASLLM_CACHE_DIR"]).expanduser()
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(keras_home) / "kerasllm" / "cache"


def corpus_hash(documents):
    """sha256 of the documents and their boundaries (16 hex digits)."""
    digest = hashlib.sha256()
    for doc in documents:
        raw = doc.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()[:16]


def cached_token_ids(tokenizer, documents, cache_dir="", add_bos=False, add_eos=True, corpus_key=None):
    """Token ids of `documents` from the cache, tokenizing (once) on a miss.

    Args:
        tokenizer: a `kerasllm.tokenizers.Tokenizer`.
        documents: list of strings.
        cache_dir: cache root ('' for the default).
        add_bos, add_eos: `<bos>` before / `<eos>` after each document.
        corpus_key: the documents' `corpus_hash`, if already computed.

    Returns:
        `(ids, hit)`: a read-only 1-D memmap (uint16 or uint32) and whether it came from cache.
    """
    key = f"{corpus_key or corpus_hash(documents)}-{tokenizer.fingerprint()}-{int(add_bos)}{int(add_eos)}"
    folder = cache_root(cache_dir) / "tokens"
    data_path, meta_path = folder / f"{key}.bin", folder / f"{key}.json"
    dtype = np.dtype(id_dtype(tokenizer.vocabulary_size))
    if data_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("dtype") == dtype.name and data_path.stat().st_size == meta["length"] * dtype.itemsize:
            return _open(data_path, dtype, meta["length"]), True
    folder.mkdir(parents=True, exist_ok=True)
    tmp = data_path.with_suffix(f".tmp{os.getpid()}")
    length = 0
    with open(tmp, "wb") as f:
        for ids in iter_encoded(tokenizer, documents, add_bos=add_bos, add_eos=add_eos):
            f.write(ids.astype(dtype).tobytes())
            length += len(ids)
    tmp.replace(data_path)
    meta_path.write_text(json.dumps({"dtype": dtype.name, "length": length, "documents": len(documents),
                                     "tokenizer": tokenizer.kind}))
    return _open(data_path, dtype, length), False


def _open(path, dtype, length):
    if length == 0:
        return np.zeros([0], dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


def cached_tokenizer(kind, documents, vocab_size=0, cache_dir="", corpus_key=None, **options):
    """A tokenizer of `kind` trained on `documents`, from the cache when trained before.

    Returns:
        `(tokenizer, hit)`.
    """
    settings = json.dumps({"kind": kind, "vocab_size": vocab_size, **options}, sort_keys=True, default=str)
    key = f"{corpus_key or corpus_hash(documents)}-{hashlib.sha256(settings.encode()).hexdigest()[:16]}"
    folder = cache_root(cache_dir) / "tokenizers" / key
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder), True
    tokenizer = get_tokenizer_class(kind).train(documents, vocab_size=vocab_size, **options)
    tokenizer.save(folder)
    return tokenizer, False
