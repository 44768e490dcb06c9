"""Word-level tokenizer: a vocabulary of the most frequent words."""

import collections

import tensorflow as tf
import tensorflow_text as tf_text

from kerasllm.errors import DataError
from kerasllm.tokenizers.base import DEFAULT_SPECIAL_TOKENS, Tokenizer, register_tokenizer

# Words keep their leading space (as GPT-2's pre-tokenizer does), so joining the pieces gives
# back the text exactly. Han characters are single words (use "jieba" for Chinese words);
# every other letter/number run is a word, other symbols and whitespace are one character each.
WORD_PATTERN = r" ?\p{Han}| ?[\p{L}\p{M}\p{N}_]+| ?[^\s\p{L}\p{M}\p{N}_]|\s"


def split_words(texts):
    """Splits a 1-D string tensor into ragged [n, None] words with WORD_PATTERN (RE2)."""
    return tf_text.regex_split(texts, WORD_PATTERN, keep_delim_regex_pattern=WORD_PATTERN)


@register_tokenizer("word")
class WordTokenizer(Tokenizer):
    """A word-level vocabulary by frequency, with a minimum count and a maximum size.

    Text is cut into words that carry their leading space, single Han characters, single
    symbols and single whitespace characters, so decoding in-vocabulary text gives it back
    exactly. Words outside the vocabulary encode to `<unk>` (decoded as U+FFFD).

    Args:
        vocabulary: the words, most frequent first (special tokens are prepended).
        special_tokens: reserved tokens; must include `<pad>`, `<unk>`, `<bos>`, `<eos>`.

    Examples:

    >>> tok = WordTokenizer.train(["the cat sat on the mat."])
    >>> tok.decode(tok.encode("the cat sat."))
    'the cat sat.'
    >>> tok.decode(tok.encode("the dog"))
    'the\\ufffd'
    """

    encode_in_graph = True

    def __init__(self, vocabulary, special_tokens=DEFAULT_SPECIAL_TOKENS):
        super().__init__(special_tokens)
        vocabulary = [w for w in vocabulary if w not in self.special_tokens]
        self.vocabulary = list(self.special_tokens) + vocabulary
        self._index = {w: i for i, w in enumerate(self.vocabulary)}
        if len(self._index) != len(self.vocabulary):
            raise DataError("word tokenizer: the vocabulary holds duplicate entries")
        self._tables = None

    @classmethod
    def pretokenize(cls, texts):
        """Lists of words of each text (the units the vocabulary is counted over)."""
        pieces = split_words(tf.constant(list(texts), tf.string))
        return [[w.decode("utf-8") for w in row] for row in pieces.to_list()]

    @classmethod
    def train(cls, texts, vocab_size=0, special_tokens=DEFAULT_SPECIAL_TOKENS, min_count=1, **kwargs):
        """Counts words in `texts` and keeps those seen `min_count` times or more.

        Args:
            texts: iterable of strings.
            vocab_size: cap on the total vocabulary (specials included); 0: no cap.
            min_count: minimum number of occurrences of a kept word.

        Ties in frequency are broken by the word itself, so training is deterministic.
        """
        if isinstance(texts, str):
            texts = [texts]
        counts = collections.Counter()
        texts = list(texts)
        for start in range(0, len(texts), 256):
            for words in cls.pretokenize(texts[start : start + 256]):
                counts.update(words)
        ranked = sorted(((w, c) for w, c in counts.items() if c >= min_count and w not in special_tokens),
                        key=lambda wc: (-wc[1], wc[0]))
        if vocab_size:
            ranked = ranked[: max(vocab_size - len(special_tokens), 0)]
        return cls([w for w, _ in ranked], special_tokens=special_tokens)

    def get_config(self):
        return {"vocabulary": self.vocabulary[len(self.special_tokens):], "special_tokens": self.special_tokens}

    def token_to_id(self, token):
        return self._index.get(token, self._index["<unk>"])

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def _decode_ids(self, ids):
        return "".join("\ufffd" if i == self.unk_id else self.vocabulary[i] for i in ids)

    def _build_tables(self):
        words = tf.constant(self.vocabulary)
        encode_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(words, tf.range(len(self.vocabulary), dtype=tf.int32)),
            default_value=self.unk_id,
        )
        return encode_table, tf.tensor_scatter_nd_update(words, [[self.unk_id]], ["\ufffd"])

    def _tf_encode_text(self, texts):
        encode_table, _ = self._graph_tables()
        words = split_words(texts)
        return words.with_flat_values(encode_table.lookup(words.flat_values))

    def _tf_decode_ids(self, ids):
        _, strings = self._graph_tables()
        return tf.strings.reduce_join(tf.ragged.map_flat_values(tf.gather, strings, ids), axis=-1)
