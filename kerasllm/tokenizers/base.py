"""The one tokenizer interface every kind implements.

A tokenizer maps text to integer ids and back, both in Python (`encode`/`decode`, on strings)
and inside TensorFlow graphs (`tf_encode`/`tf_decode`, on string and int tensors), so the same
object feeds `tf.data` pipelines and exported SavedModels. It is trained from text with
`Tokenizer.train`, saved into a folder with `save` and restored with `load_tokenizer`.
"""

import json
from pathlib import Path

import numpy as np

from kerasllm.errors import DataError

TOKENIZER_FILE = "tokenizer.json"
_REGISTRY = {}

DEFAULT_SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def register_tokenizer(kind):
    """Class decorator: makes a tokenizer class available under `data.tokenizer = kind`."""

    def decorate(cls):
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return decorate


def tokenizer_kinds():
    return sorted(_REGISTRY)


def get_tokenizer_class(kind):
    if kind not in _REGISTRY:
        raise DataError(
            f"data.tokenizer = {kind!r} is not a known tokenizer; expected one of "
            f"{', '.join(tokenizer_kinds())}"
        )
    return _REGISTRY[kind]


class Tokenizer:
    """Base class. Subclasses set `kind` through `register_tokenizer`.

    Every tokenizer reserves the special tokens `<pad>` (id 0), `<unk>`, `<bos>` and `<eos>`
    first, then any user-defined special tokens, then the learned vocabulary.
    """

    kind = None

    def __init__(self, special_tokens=DEFAULT_SPECIAL_TOKENS):
        special_tokens = list(special_tokens)
        for required in DEFAULT_SPECIAL_TOKENS:
            if required not in special_tokens:
                raise DataError(f"special tokens must include {required!r}; got {special_tokens}")
        self.special_tokens = special_tokens

    # --- ids of the special tokens -------------------------------------------------------
    def token_to_id(self, token):
        raise NotImplementedError

    @property
    def pad_id(self):
        return self.token_to_id("<pad>")

    @property
    def unk_id(self):
        return self.token_to_id("<unk>")

    @property
    def bos_id(self):
        return self.token_to_id("<bos>")

    @property
    def eos_id(self):
        return self.token_to_id("<eos>")

    @property
    def special_ids(self):
        return [self.token_to_id(t) for t in self.special_tokens]

    @property
    def vocabulary_size(self):
        raise NotImplementedError

    # --- training and persistence --------------------------------------------------------
    @classmethod
    def train(cls, texts, vocab_size=0, special_tokens=DEFAULT_SPECIAL_TOKENS, **kwargs):
        """Learns a vocabulary from an iterable of strings and returns a tokenizer."""
        raise NotImplementedError

    def get_config(self):
        """JSON-serializable state; `from_config(get_config())` rebuilds the tokenizer."""
        return {"special_tokens": self.special_tokens}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def save(self, directory):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"kind": self.kind, "config": self.get_config()}
        tmp = directory / (TOKENIZER_FILE + ".tmp")
        tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(directory / TOKENIZER_FILE)

    # --- Python-side encoding ------------------------------------------------------------
    def encode(self, text):
        """Encodes one string to a 1-D int32 numpy array of ids."""
        raise NotImplementedError

    def decode(self, ids, skip_special_tokens=True):
        """Decodes a sequence of ids to a string."""
        raise NotImplementedError

    # --- graph-side encoding -------------------------------------------------------------
    def tf_encode(self, texts):
        """Encodes a string tensor: scalar -> 1-D int32 ids, [batch] -> ragged [batch, None]."""
        raise NotImplementedError

    def tf_decode(self, ids):
        """Decodes int ids ([time] or [batch, time], dense or ragged) to a string tensor."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(vocabulary_size={self.vocabulary_size})"


def load_tokenizer(directory):
    """Restores a tokenizer saved with `Tokenizer.save`.

    Examples:

    >>> import tempfile
    >>> from kerasllm.tokenizers import CharTokenizer
    >>> tok = CharTokenizer.train(["hello"])
    >>> folder = tempfile.mkdtemp()
    >>> tok.save(folder)
    >>> load_tokenizer(folder).decode(tok.encode("hello"))
    'hello'
    """
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"{path}: no tokenizer saved here (expected {TOKENIZER_FILE})")
    payload = json.loads(path.read_text(encoding="utf-8"))
    return get_tokenizer_class(payload["kind"]).from_config(payload["config"])


def as_id_array(ids):
    """Accepts a list, numpy array or tensor of ids and returns a 1-D int64 numpy array."""
    return np.asarray(ids, dtype=np.int64).reshape(-1)
