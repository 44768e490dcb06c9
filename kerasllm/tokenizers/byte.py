"""Byte-level tokenizer: one id per UTF-8 byte."""

import numpy as np
import tensorflow as tf

from kerasllm.tokenizers.base import DEFAULT_SPECIAL_TOKENS, Tokenizer, register_tokenizer, replace_spans, special_spans


@register_tokenizer("byte")
class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: a fixed vocabulary of the special tokens followed by 256 bytes.

    Nothing to learn and nothing unknown: every string round-trips exactly, in any script.
    Decoding a byte sequence that is not valid UTF-8 (a window cut inside a character) gives
    U+FFFD for the broken bytes.

    Args:
        special_tokens: reserved tokens; must include `<pad>`, `<unk>`, `<bos>`, `<eos>`.

    Examples:

    >>> tok = ByteTokenizer.train([])
    >>> tok.vocabulary_size
    260
    >>> tok.decode(tok.encode("héllo 红"))
    'héllo 红'
    """

    def __init__(self, special_tokens=DEFAULT_SPECIAL_TOKENS):
        super().__init__(special_tokens)
        self.offset = len(self.special_tokens)
        self._special_to_id = {t: i for i, t in enumerate(self.special_tokens)}
        self._byte_strings = None

    @classmethod
    def train(cls, texts=(), vocab_size=0, special_tokens=DEFAULT_SPECIAL_TOKENS, **kwargs):
        """Nothing is learned; `texts` and `vocab_size` are ignored."""
        return cls(special_tokens=special_tokens)

    def token_to_id(self, token):
        if token in self._special_to_id:
            return self._special_to_id[token]
        raw = token.encode("utf-8")
        return raw[0] + self.offset if len(raw) == 1 else self.unk_id

    @property
    def vocabulary_size(self):
        return self.offset + 256

    def encode(self, text):
        """Encodes one string to int32 ids: its UTF-8 bytes plus the offset, special tokens
        found by vectorized comparisons over the bytes (UTF-8 is self-synchronizing, so a
        match of a token's bytes is a match of its characters)."""
        return self.encode_utf8(text.encode("utf-8"))

    def encode_utf8(self, raw):
        """Encodes UTF-8 bytes (a `bytes` object) as `encode` encodes the text they spell."""
        units = np.frombuffer(raw, dtype=np.uint8)
        ids = units.astype(np.int32)
        ids += self.offset
        specials = [(np.frombuffer(t.encode("utf-8"), np.uint8), i) for i, t in enumerate(self.special_tokens)]
        return replace_spans(ids, *special_spans(units, specials))

    def _encode_text(self, text):
        return self.encode(text)

    def _decode_ids(self, ids):
        ids = np.asarray(ids)
        unk = np.flatnonzero(ids == self.unk_id)
        parts = np.split(ids, unk)  # each part after the first starts with the <unk> id
        parts = [parts[0]] + [part[1:] for part in parts[1:]]
        return "\ufffd".join(
            (part - self.offset).astype(np.uint8).tobytes().decode("utf-8", errors="replace") for part in parts
        )

    def _tf_encode_text(self, texts):
        pieces = tf.strings.bytes_split(texts)
        values = tf.reshape(tf.io.decode_raw(pieces.flat_values, tf.uint8), [-1])
        return pieces.with_flat_values(tf.cast(values, tf.int32) + self.offset)

    def _tf_decode_ids(self, ids):
        if self._byte_strings is None:
            strings = [b""] * self.vocabulary_size
            strings[self.unk_id] = "\ufffd".encode("utf-8")
            for byte in range(256):
                strings[self.offset + byte] = bytes([byte])
            with tf.init_scope():  # eager, also when first built while tracing
                self._byte_strings = tf.constant(strings)
        joined = tf.strings.reduce_join(tf.ragged.map_flat_values(tf.gather, self._byte_strings, ids), axis=-1)
        # Broken UTF-8 (a window cut inside a character) becomes U+FFFD, as in Python.
        return tf.strings.unicode_transcode(joined, "UTF-8", "UTF-8", errors="replace")
