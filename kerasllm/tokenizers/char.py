"""Character (Unicode codepoint) tokenizer."""

import collections

import numpy as np
import tensorflow as tf

from kerasllm.tokenizers.base import (
    DEFAULT_SPECIAL_TOKENS,
    Tokenizer,
    register_tokenizer,
    replace_spans,
    special_spans,
)


@register_tokenizer("char")
class CharTokenizer(Tokenizer):
    """One id per Unicode codepoint seen in the training text.

    Ids 0..len(special_tokens)-1 are the special tokens; the characters follow in codepoint
    order. A character that was not in the training text encodes to `<unk>` and decodes to
    U+FFFD. Works for any script: English, Chinese, emoji.

    Args:
        chars: the vocabulary, a string or list of single characters.
        special_tokens: reserved tokens; must include `<pad>`, `<unk>`, `<bos>`, `<eos>`.

    Examples:

    >>> tok = CharTokenizer.train(["to be or not to be", "红楼梦"])
    >>> ids = tok.encode("be 红")
    >>> tok.decode(ids)
    'be 红'
    >>> tok.vocabulary_size
    14
    """

    def __init__(self, chars, special_tokens=DEFAULT_SPECIAL_TOKENS):
        super().__init__(special_tokens)
        chars = sorted(set(chars))
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer vocabulary entries must be single characters")
        self.chars = chars
        offset = len(self.special_tokens)
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.int64)  # sorted
        self._ids = np.arange(offset, offset + len(chars), dtype=np.int64)
        self._special_to_id = {t: i for i, t in enumerate(self.special_tokens)}
        self._tables = None

    @classmethod
    def train(cls, texts, vocab_size=0, special_tokens=DEFAULT_SPECIAL_TOKENS, **kwargs):
        """Builds the vocabulary from every character in `texts`.

        With `vocab_size > 0` only the most frequent characters are kept, so the total
        vocabulary (specials included) is at most `vocab_size`.
        """
        if isinstance(texts, str):
            texts = [texts]
        if vocab_size:
            counts = collections.Counter()
            for text in texts:
                counts.update(text)
            keep = max(vocab_size - len(special_tokens), 0)
            chars = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:keep]]
        else:
            chars = set()
            for text in texts:
                chars.update(text)
        return cls(chars, special_tokens=special_tokens)

    def get_config(self):
        return {"chars": "".join(self.chars), "special_tokens": self.special_tokens}

    @classmethod
    def from_config(cls, config):
        return cls(list(config["chars"]), special_tokens=config["special_tokens"])

    def token_to_id(self, token):
        if token in self._special_to_id:
            return self._special_to_id[token]
        if len(token) == 1:
            index = np.searchsorted(self._codepoints, ord(token))
            if index < len(self._codepoints) and self._codepoints[index] == ord(token):
                return int(self._ids[index])
        return self.unk_id

    @property
    def vocabulary_size(self):
        return len(self.special_tokens) + len(self.chars)

    def encode(self, text):
        """Encodes one string to int32 ids: a table lookup over its codepoints, special tokens
        found by vectorized comparisons (no Python loop over characters or specials)."""
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = self._lookup_table()[codepoints]
        specials = [(np.frombuffer(t.encode("utf-32-le"), np.uint32), i) for i, t in enumerate(self.special_tokens)]
        return replace_spans(ids, *special_spans(codepoints, specials))

    def _encode_text(self, text):
        return self.encode(text)

    def _lookup_table(self):
        """Dense codepoint -> id table over all of Unicode (4.4 MB): indexing needs no clamp."""
        if getattr(self, "_table", None) is None:
            self._table = np.full(0x110000, self.unk_id, np.int32)
            self._table[self._codepoints] = self._ids
        return self._table

    def _id_to_codepoint(self):
        """Array mapping id -> codepoint; specials -> -1 (dropped), <unk> -> U+FFFD."""
        table = np.full(self.vocabulary_size, -1, dtype=np.int64)
        table[self._ids] = self._codepoints
        table[self.unk_id] = 0xFFFD
        return table

    def _decode_ids(self, ids):
        codepoints = self._id_to_codepoint()[ids]
        return "".join(map(chr, codepoints[codepoints >= 0]))

    def _build_tables(self):
        encode_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self._codepoints, tf.int32), tf.constant(self._ids, tf.int32)
            ),
            default_value=self.unk_id,
        )
        return encode_table, tf.constant(self._id_to_codepoint(), tf.int32)

    def _tf_encode_text(self, texts):
        encode_table, _ = self._graph_tables()
        codepoints = tf.strings.unicode_decode(texts, "UTF-8", errors="replace")
        return codepoints.with_flat_values(encode_table.lookup(codepoints.flat_values))

    def _tf_decode_ids(self, ids):
        _, decode_table = self._graph_tables()
        codepoints = tf.ragged.map_flat_values(tf.gather, decode_table, ids)
        codepoints = tf.ragged.boolean_mask(codepoints, codepoints >= 0)
        return tf.strings.unicode_encode(codepoints, "UTF-8")
