"""SentencePiece tokenizer (unigram or BPE), trained by the sentencepiece library."""

import base64
import io

import keras_hub
import numpy as np
import tensorflow as tf

from kerasllm.errors import DataError
from kerasllm.tokenizers.base import (
    DEFAULT_SPECIAL_TOKENS,
    Tokenizer,
    as_ragged,
    count_codepoints,
    graph_call,
    register_tokenizer,
)


# SentencePiece refuses a character_coverage below this.
MIN_CHARACTER_COVERAGE = 0.98


def fitting_coverage(lines, vocab_size, reserved, requested=0.9995):
    """The character coverage to train with: `requested` when the characters it keeps fit in
    `vocab_size` beside the `reserved` pieces, else the largest coverage that fits (>= 0.98;
    byte fallback spells the rest, as SentencePiece recommends for CJK text).

    Raises:
        DataError: even 98% coverage does not fit; the message gives the smallest size that does.

    Examples:

    >>> lines = ["ab" * 500 + "cdefghij"]  # a, b: 99.2% of the characters
    >>> fitting_coverage(lines, 300, 261)  # all 10 characters fit beside 261 reserved pieces
    0.9995
    >>> round(fitting_coverage(lines, 265, 261), 4)  # room for 4: keep a, b, c, d
    0.9936
    >>> fitting_coverage(lines, 262, 261)
    Traceback (most recent call last):
    ...
    kerasllm.errors.DataError: sentencepiece: data.vocab_size = 262 cannot hold the 2 characters that cover 98% of the text beside 261 reserved pieces (special tokens, newline, 256 bytes); the smallest vocab_size that works is 263
    """
    counts = count_codepoints(lines)
    ranked = np.sort(counts[counts > 0])[::-1]
    cumulative = np.cumsum(ranked) / max(1, ranked.sum())

    def kept(coverage):  # how many characters SentencePiece keeps at this coverage
        return min(len(ranked), int(np.searchsorted(cumulative, coverage, side="left")) + 1)

    room = vocab_size - reserved
    if kept(requested) <= room:
        return requested
    if kept(MIN_CHARACTER_COVERAGE) > room:
        needed = kept(MIN_CHARACTER_COVERAGE)
        raise DataError(
            f"sentencepiece: data.vocab_size = {vocab_size} cannot hold the {needed} characters that cover 98% "
            f"of the text beside {reserved} reserved pieces (special tokens, newline, 256 bytes); the smallest "
            f"vocab_size that works is {needed + reserved}"
        )
    # Midway into the share of the last character that fits: exactly `room` characters are kept.
    return float(max(MIN_CHARACTER_COVERAGE, cumulative[room - 1] - (ranked[room - 1] / ranked.sum()) / 2))


@register_tokenizer("sentencepiece")
class SentencePieceTokenizer(Tokenizer):
    """SentencePiece on raw text: no pre-splitting, so it suits Chinese as well as English.

    Trained by the `sentencepiece` library (a keras-hub dependency) with identity
    normalization, no dummy prefix, whitespace kept as-is and byte fallback, so every string
    (emoji and rare codepoints included) round-trips exactly. `\\n` is a piece of its own.
    Python encoding uses `sentencepiece.SentencePieceProcessor`; graph encoding uses
    `keras_hub.tokenizers.SentencePieceTokenizer` (tensorflow-text's op) on the same model, so
    both give the same ids.

    Args:
        proto: the serialized SentencePiece model (bytes).
        special_tokens: reserved tokens; must include `<pad>`, `<unk>`, `<bos>`, `<eos>`
            (ids 0-3); others become user-defined pieces.

    Examples:

    >>> tok = SentencePieceTokenizer.train(["the cat sat on the mat\\n"] * 50, vocab_size=300)
    >>> tok.decode(tok.encode("the mat 🙂"))
    'the mat 🙂'
    """

    def __init__(self, proto, special_tokens=DEFAULT_SPECIAL_TOKENS):
        super().__init__(special_tokens)
        import sentencepiece

        self.proto = bytes(proto)
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=self.proto)
        self._hub = None
        for index, name in enumerate(DEFAULT_SPECIAL_TOKENS):
            if self._processor.piece_to_id(name) != index:
                raise DataError(f"sentencepiece model: {name!r} must have id {index}")

    @classmethod
    def train(cls, texts, vocab_size=8000, special_tokens=DEFAULT_SPECIAL_TOKENS, model_type="unigram",
              seed=1337, character_coverage=0.9995, max_sentences=2_000_000, **kwargs):
        """Trains a unigram (or `model_type="bpe"`) model of at most `vocab_size` pieces.

        Documents are fed line by line (at most `max_sentences` lines, sampled with `seed`).
        """
        import sentencepiece

        if model_type not in ("unigram", "bpe"):
            raise DataError(f"sentencepiece model_type = {model_type!r}: expected 'unigram' or 'bpe'")
        if isinstance(texts, str):
            texts = [texts]
        lines = [line for text in texts for line in text.split("\n") if line]
        if not lines:
            raise DataError("sentencepiece: no text to train on")
        sentencepiece.set_random_generator_seed(seed)
        model = io.BytesIO()
        extra = [t for t in special_tokens if t not in DEFAULT_SPECIAL_TOKENS]
        vocab_size = vocab_size or 8000
        reserved = len(DEFAULT_SPECIAL_TOKENS) + len(extra) + 1 + 256  # specials, "\n", byte pieces
        coverage = fitting_coverage(lines, vocab_size, reserved, character_coverage)
        options = dict(
            vocab_size=vocab_size, model_type=model_type, character_coverage=coverage,
            byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=False,
            hard_vocab_limit=False, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            pad_piece="<pad>", unk_piece="<unk>", bos_piece="<bos>", eos_piece="<eos>",
            user_defined_symbols=[*extra, "\n"], input_sentence_size=max_sentences,
            shuffle_input_sentence=True, max_sentence_length=1 << 16, num_threads=2, minloglevel=2,
        )
        try:
            sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **options)
        except RuntimeError as error:
            raise DataError(
                f"sentencepiece: training failed ({str(error).strip()[-200:]}); raise data.vocab_size "
                "(it must hold every character kept by character_coverage)"
            ) from None
        return cls(model.getvalue(), special_tokens=special_tokens)

    def get_config(self):
        return {"proto": base64.b64encode(self.proto).decode("ascii"), "special_tokens": self.special_tokens}

    @classmethod
    def from_config(cls, config):
        return cls(base64.b64decode(config["proto"]), special_tokens=config["special_tokens"])

    def token_to_id(self, token):
        index = self._processor.piece_to_id(token)
        return index if self._processor.id_to_piece(index) == token else self.unk_id

    @property
    def vocabulary_size(self):
        return self._processor.get_piece_size()

    def _encode_text(self, text):
        return np.asarray(self._processor.encode(text), np.int32)

    def _decode_ids(self, ids):
        pieces = [int(i) for i in ids]
        return self._processor.decode(pieces).replace(" \u2047 ", "\ufffd")

    @property
    def hub_tokenizer(self):
        if self._hub is None:
            with tf.init_scope():
                self._hub = keras_hub.tokenizers.SentencePieceTokenizer(proto=self.proto, dtype="int32")
        return self._hub

    def _tf_encode_text(self, texts):
        return as_ragged(tf.cast(graph_call(self.hub_tokenizer, "tokenize", texts), tf.int32))

    def _tf_decode_ids(self, ids):
        return tf.strings.regex_replace(graph_call(self.hub_tokenizer, "detokenize", ids), " \u2047 ", "\ufffd")
