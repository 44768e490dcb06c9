"""The data stage of a pretraining run: read, clean, split, train the tokenizer, encode (cached)."""

import dataclasses
import time

import numpy as np

from kerasllm.data.cache import cached_token_ids, cached_tokenizer, corpus_hash
from kerasllm.data.cleaning import clean_documents
from kerasllm.data.pipeline import encode_documents, split_documents
from kerasllm.data.readers import read_documents
from kerasllm.errors import DataError
from kerasllm.tokenizers import get_tokenizer_class
from kerasllm.tokenizers.base import DEFAULT_SPECIAL_TOKENS


@dataclasses.dataclass
class PreparedData:
    tokenizer: object
    train_ids: np.ndarray
    val_ids: np.ndarray


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


def prepare_lm_data(data, tokenizer=None, log=print):
    """Documents -> (tokenizer, train ids, val ids) as a `DataConfig` says.

    Args:
        data: a `kerasllm.config.DataConfig`.
        tokenizer: reuse this tokenizer (a resumed run) instead of training one.
        log: progress printer.

    Returns:
        `PreparedData`; with `data.cache` the id arrays are read-only memmaps of the cache.
    """
    started = time.perf_counter()
    documents = read_documents(data.dataset, text_field=data.text_field or None)
    if data.clean:
        documents = clean_documents(documents, data.clean)
        if not documents:
            raise DataError(f"{data.dataset}: no text left after cleaning with data.clean = {data.clean!r}")
    train_docs, val_docs = split_documents(documents, data.val_fraction, data.split, data.seed)
    train_key = corpus_hash(train_docs)
    trained = "reused"
    if tokenizer is None:
        options = tokenizer_options(data)
        if data.cache:
            tokenizer, hit = cached_tokenizer(
                data.tokenizer, train_docs, data.vocab_size, data.cache_dir, corpus_key=train_key, **options
            )
            trained = "from cache" if hit else "trained"
        else:
            tokenizer = get_tokenizer_class(data.tokenizer).train(train_docs, vocab_size=data.vocab_size, **options)
            trained = "trained"
    if data.cache:
        train_ids, hit = cached_token_ids(tokenizer, train_docs, data.cache_dir, data.add_bos, corpus_key=train_key)
        val_ids, _ = cached_token_ids(tokenizer, val_docs, data.cache_dir, data.add_bos)
        ids_from = "token cache" if hit else "tokenized, cached"
    else:
        train_ids = encode_documents(tokenizer, train_docs, add_bos=data.add_bos)
        val_ids = encode_documents(tokenizer, val_docs, add_bos=data.add_bos)
        ids_from = "tokenized"
    log(
        f"data: {data.dataset} - {len(documents)} documents, {len(train_ids):,} train / "
        f"{len(val_ids):,} val tokens ({ids_from}), {tokenizer.kind} tokenizer with "
        f"{tokenizer.vocabulary_size} ids ({trained}), {time.perf_counter() - started:.1f} s"
    )
    return PreparedData(tokenizer, train_ids, val_ids)
