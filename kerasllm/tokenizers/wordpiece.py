"""WordPiece tokenizer: keras-hub's WordPieceTokenizer with a vocabulary learned by keras-hub."""

import keras_hub
import numpy as np
import tensorflow as tf

from kerasllm.tokenizers.base import (
    DEFAULT_SPECIAL_TOKENS,
    Tokenizer,
    as_ragged,
    graph_call,
    register_tokenizer,
)


@register_tokenizer("wordpiece")
class WordPieceTokenizer(Tokenizer):
    """BERT-style WordPiece: whitespace/punctuation pre-split, then greedy longest-match pieces.

    The vocabulary is learned with `keras_hub.tokenizers.compute_word_piece_vocabulary`
    (tensorflow-text's BERT vocabulary learner) and text is tokenized by
    `keras_hub.tokenizers.WordPieceTokenizer` (tensorflow-text's FastWordpiece op), in Python
    and in graphs alike. Han characters are split one per word, as in BERT's Chinese models.

    WordPiece does not keep whitespace: decoding joins words with single spaces and puts a
    space around punctuation ("a, b" -> "a , b"). Use sentencepiece, bpe, byte or char where
    text must round-trip exactly. A word whose characters are not in the vocabulary is `<unk>`.

    Args:
        vocabulary: the pieces (continuations start with `##`), special tokens first.
        special_tokens: reserved tokens; must include `<pad>`, `<unk>`, `<bos>`, `<eos>`.
        lowercase: lower-case (and strip accents from) text before tokenizing.

    Examples:

    >>> tok = WordPieceTokenizer.train(["the cat sat on the mat"] * 10, vocab_size=60)
    >>> tok.decode(tok.encode("the cat sat"))
    'the cat sat'
    """

    encode_in_graph = True

    def __init__(self, vocabulary, special_tokens=DEFAULT_SPECIAL_TOKENS, lowercase=False):
        super().__init__(special_tokens)
        vocabulary = list(special_tokens) + [p for p in vocabulary if p not in special_tokens]
        self.vocabulary = vocabulary
        self.lowercase = lowercase
        self._index = {p: i for i, p in enumerate(vocabulary)}
        self._hub = keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=vocabulary, lowercase=lowercase, strip_accents=lowercase,
            oov_token="<unk>", dtype="int32",
        )

    @classmethod
    def train(cls, texts, vocab_size=8000, special_tokens=DEFAULT_SPECIAL_TOKENS, lowercase=False, **kwargs):
        """Learns up to `vocab_size` pieces (specials included) from an iterable of strings.

        Long documents are fed line by line; the learner is deterministic.
        """
        if isinstance(texts, str):
            texts = [texts]
        lines = [line for text in texts for line in text.split("\n") if line.strip()]
        data = tf.data.Dataset.from_tensor_slices(tf.constant(lines or [""], tf.string)).batch(1024)
        vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
            data, vocabulary_size=vocab_size or 8000, lowercase=lowercase, strip_accents=lowercase,
            reserved_tokens=list(special_tokens),
        )
        return cls(vocabulary, special_tokens=special_tokens, lowercase=lowercase)

    def get_config(self):
        return {
            "vocabulary": self.vocabulary[len(self.special_tokens):],
            "special_tokens": self.special_tokens,
            "lowercase": self.lowercase,
        }

    def token_to_id(self, token):
        return self._index.get(token, self._index["<unk>"])

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def _decode_ids(self, ids):
        if not len(ids):
            return ""
        return self._tf_decode_ids(tf.ragged.constant([np.asarray(ids, np.int32).tolist()], tf.int32))[0].numpy().decode("utf-8")

    def _tf_encode_text(self, texts):
        # The op itself (not the keras layer's __call__, which converts outputs to numpy).
        return as_ragged(tf.cast(graph_call(self._hub, "tokenize", texts), tf.int32))

    def _tf_decode_ids(self, ids):
        text = graph_call(self._hub, "detokenize", ids)
        return tf.strings.regex_replace(text, "<unk>", "\ufffd")
