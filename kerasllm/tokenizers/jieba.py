"""Chinese word-level tokenizer with jieba segmentation (optional extra `[zh]`)."""

import collections
import functools

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from kerasllm.errors import DataError
from kerasllm.tokenizers.base import DEFAULT_SPECIAL_TOKENS, register_tokenizer
from kerasllm.tokenizers.word import WordTokenizer

# Serving-side pre-split: whitespace, single non-Han symbols and Han/letter runs.
_RUNS = r"\s|[^\s\p{Han}\p{L}\p{N}]|[\p{Han}]+|[\p{L}\p{M}\p{N}_]+"


@functools.lru_cache(maxsize=1)
def import_jieba():
    """The jieba module, imported once, with its log silenced; a clear error when missing."""
    try:
        import jieba
    except ImportError:
        raise DataError(
            'data.tokenizer = "jieba" needs the jieba package: pip install -e ".[zh]"'
        ) from None
    import logging

    jieba.setLogLevel(logging.WARNING)
    return jieba


@register_tokenizer("jieba")
class JiebaTokenizer(WordTokenizer):
    """Word-level vocabulary over jieba's segmentation of Chinese (and mixed) text.

    In Python (`encode`, used by the data pipeline) text is segmented by jieba (precise mode
    with HMM) once per corpus; the token ids are then cached on disk by the pipeline, so
    segmentation is never repeated per epoch. Every character of the training text is also in
    the vocabulary, so unseen words fall back to characters rather than `<unk>`.

    In TF graphs (`tf_encode`, e.g. an exported SavedModel, where jieba is not available)
    each run of Han characters is segmented by forward maximum matching over this vocabulary
    (tensorflow-text's WordpieceTokenizer with an empty suffix indicator). That agrees with
    jieba on most words, not on all, and a Han run holding a character outside the vocabulary
    becomes one `<unk>` (WordPiece semantics): train and evaluate through `encode`; serve with the
    graph version knowing it is an approximation (measured agreement in the tests).

    Examples:

    >>> tok = JiebaTokenizer.train(["我们今天去北京。", "北京的天气很好"])
    >>> tok.decode(tok.encode("今天北京天气很好"))
    '今天北京天气很好'
    """

    @classmethod
    def pretokenize(cls, texts):
        jieba = import_jieba()
        return [jieba.lcut(text, HMM=True) for text in texts]

    @classmethod
    def train(cls, texts, vocab_size=0, special_tokens=DEFAULT_SPECIAL_TOKENS, min_count=1, **kwargs):
        """Counts jieba words; every character seen is kept too (the fallback for unseen words)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        words, chars = collections.Counter(), collections.Counter()
        for pieces in cls.pretokenize(texts):
            words.update(pieces)
        for text in texts:
            chars.update(text)
        char_list = sorted(c for c in chars if c not in special_tokens)
        ranked = sorted(((w, c) for w, c in words.items() if c >= min_count and len(w) > 1 and w not in special_tokens),
                        key=lambda wc: (-wc[1], wc[0]))
        if vocab_size:
            ranked = ranked[: max(vocab_size - len(special_tokens) - len(char_list), 0)]
        return cls(char_list + [w for w, _ in ranked], special_tokens=special_tokens)

    encode_in_graph = False  # jieba runs in Python; the graph version approximates it

    def _encode_text(self, text):
        ids = []
        for word in import_jieba().lcut(text, HMM=True):
            index = self._index.get(word)
            if index is not None:
                ids.append(index)
            else:  # an unseen word: its characters
                ids.extend(self._index.get(c, self.unk_id) for c in word)
        return np.asarray(ids, np.int32)

    def _build_tables(self):
        tables = super()._build_tables()
        lookup = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.vocabulary), tf.range(len(self.vocabulary), dtype=tf.int64)
            ),
            default_value=self.unk_id,
        )
        self._wordpiece = tf_text.WordpieceTokenizer(
            lookup, suffix_indicator="", max_bytes_per_word=1 << 16, max_chars_per_token=None,
            token_out_type=tf.int64, unknown_token=None,
        )
        return tables

    def _tf_encode_text(self, texts):
        self._graph_tables()
        runs = tf_text.regex_split(texts, _RUNS, keep_delim_regex_pattern=_RUNS)
        ids = self._wordpiece.tokenize(runs.flat_values)  # [n_runs, pieces]
        return runs.with_flat_values(tf.cast(ids, tf.int32)).merge_dims(1, 2)
