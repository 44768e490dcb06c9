"""Byte-level BPE: merges trained by HF `tokenizers`, tokenization by keras-hub."""

import itertools
import json

import keras_hub
import numpy as np
import tensorflow as tf

from kerasllm.tokenizers.base import (
    DEFAULT_SPECIAL_TOKENS,
    Tokenizer,
    as_ragged,
    graph_call,
    lines_of,
    register_tokenizer,
)


def _hf_tokenizer(vocabulary, merges, special_tokens):
    """The same BPE as a HF `tokenizers` object (Rust): fast Python-side encoding.

    The special tokens are HF special tokens (their ids are the vocabulary's), so HF cuts
    the text at them in Rust, as `Tokenizer.encode`'s longest-first regex split does.
    """
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    hf = HFTokenizer(models.BPE(vocab=vocabulary, merges=[tuple(m.split(" ")) for m in merges]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return hf


@register_tokenizer("bpe")
class BPETokenizer(Tokenizer):
    """GPT-2 style byte-level BPE: any string encodes without `<unk>` and round-trips exactly.

    keras-hub has no BPE trainer, so merges are learned by HF `tokenizers`' `BpeTrainer` (a
    keras-hub dependency, declared in pyproject) over GPT-2's byte-to-unicode alphabet and
    pre-tokenizer. Graph encoding is `keras_hub.tokenizers.BytePairTokenizer` with those
    merges (pure TF ops, exportable); Python encoding uses the same merges in HF's Rust
    implementation, which is measurably faster for whole corpora and gives the same ids
    (tested).

    Args:
        vocabulary: dict piece -> id; the special tokens hold ids 0..n-1.
        merges: list of "a b" merge rules, in priority order.
        special_tokens: reserved tokens; must include `<pad>`, `<unk>`, `<bos>`, `<eos>`.

    Examples:

    >>> tok = BPETokenizer.train(["the cat sat on the mat"] * 20, vocab_size=300)
    >>> tok.decode(tok.encode("the cat 🙂"))
    'the cat 🙂'
    """

    def __init__(self, vocabulary, merges, special_tokens=DEFAULT_SPECIAL_TOKENS):
        super().__init__(special_tokens)
        self.vocabulary = dict(vocabulary)
        self.merges = list(merges)
        for index, name in enumerate(self.special_tokens):
            if self.vocabulary.get(name) != index:
                raise ValueError(f"bpe vocabulary: {name!r} must have id {index}")
        self._pieces = sorted(self.vocabulary, key=self.vocabulary.get)
        self._hf = _hf_tokenizer(self.vocabulary, self.merges, self.special_tokens)
        self._hub = None

    @classmethod
    def train(cls, texts, vocab_size=8000, special_tokens=DEFAULT_SPECIAL_TOKENS, min_frequency=2, **kwargs):
        """Learns merges until the vocabulary (256 bytes + specials included) has `vocab_size`."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers, trainers

        if isinstance(texts, str):
            texts = [texts]
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size or 8000, min_frequency=min_frequency, show_progress=False,
            special_tokens=list(special_tokens), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        # One list of lines per text: HF takes batches, and counts words line by line either way.
        hf.train_from_iterator((text.splitlines(keepends=True) for text in texts), trainer)
        model = json.loads(hf.to_str())["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        return cls(model["vocab"], merges, special_tokens=special_tokens)

    def get_config(self):
        return {"vocabulary": self.vocabulary, "merges": self.merges, "special_tokens": self.special_tokens}

    def token_to_id(self, token):
        return self.vocabulary.get(token, self.vocabulary["<unk>"])

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def encode(self, text):
        """Encodes one string to int32 ids: all its lines in one Rust `encode_batch` call.

        Line by line, as `tf_encode` does (keras-hub's pre-split is superlinear in line
        length); the special tokens are cut out by HF itself.
        """
        lines = lines_of(text)
        if not lines:
            return np.zeros([0], np.int32)
        encode_batch = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)  # (no offsets)
        return np.fromiter(itertools.chain.from_iterable(e.ids for e in encode_batch(lines)), np.int32)

    def _encode_text(self, text):
        return self.encode(text)

    def _decode_ids(self, ids):
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=False).replace("<unk>", "\ufffd")

    @property
    def hub_tokenizer(self):
        if self._hub is None:
            with tf.init_scope():
                self._hub = keras_hub.tokenizers.BytePairTokenizer(
                    vocabulary=self.vocabulary, merges=self.merges, dtype="int32"
                )
        return self._hub

    def _tf_encode_text(self, texts):
        return as_ragged(tf.cast(graph_call(self.hub_tokenizer, "tokenize", texts), tf.int32))

    def _tf_decode_ids(self, ids):
        return graph_call(self.hub_tokenizer, "detokenize", ids)
