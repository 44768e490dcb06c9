"""The one tokenizer interface every kind implements.

A tokenizer maps text to integer ids and back, both in Python (`encode`/`decode`, on strings)
and inside TensorFlow graphs (`tf_encode`/`tf_decode`, on string and int tensors), so the same
object feeds `tf.data` pipelines and exported SavedModels. It is trained from text with
`Tokenizer.train`, saved into a folder with `save` and restored with `load_tokenizer`.
"""

import hashlib
import json
import re
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
    # Special tokens are never split: `encode` cuts the text at every special token string
    # (longest first), maps those to their ids and encodes the text between with
    # `_encode_text`; `tf_encode` does the same with tensorflow-text's `regex_split`.
    def _special_regex(self):
        names = sorted(self.special_tokens, key=len, reverse=True)
        return "|".join(re.escape(name) for name in names)

    # Kinds whose tokenization is a TF op anyway encode in Python through `tf_encode`: one
    # call per text, however many special tokens it holds.
    encode_in_graph = False

    def encode(self, text):
        """Encodes one string to a 1-D int32 numpy array of ids."""
        if self.encode_in_graph:
            import tensorflow as tf

            return self.tf_encode(tf.constant(text, tf.string)).numpy().astype(np.int32)
        if not any(name in text for name in self.special_tokens):
            return np.asarray(self._encode_text(text), dtype=np.int32)
        # [plain, special, plain, ...]: the plain parts encoded in one call, the specials
        # inserted between them.
        parts = re.split(f"({self._special_regex()})", text)
        ids, lengths = self._encode_joined(parts[0::2])
        specials = [self.token_to_id(name) for name in parts[1::2]]
        return np.insert(np.asarray(ids, np.int32), np.cumsum(lengths[:-1]), specials).astype(np.int32)

    def _encode_joined(self, texts):
        """`(ids of all texts, one after another; the id count of each)` for texts free of
        special tokens. Kinds that encode position by position do it in one vectorized call."""
        encoded = [np.asarray(self._encode_text(t), np.int32) if t else np.zeros([0], np.int32) for t in texts]
        return np.concatenate(encoded), np.array([len(e) for e in encoded], np.int64)

    def encode_batch(self, texts):
        """Encodes a list of strings to a list of int32 arrays."""
        if self.encode_in_graph and len(texts):
            import tensorflow as tf

            ids = self.tf_encode(tf.constant(list(texts), tf.string))
            return [np.asarray(row, np.int32) for row in ids.numpy()]
        return [self.encode(text) for text in texts]

    def _encode_text(self, text):
        """Encodes text that holds no special token (subclasses)."""
        raise NotImplementedError

    def decode(self, ids, skip_special_tokens=True):
        """Decodes a sequence of ids to a string; special tokens are dropped or spelled out."""
        ids = as_id_array(ids)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.vocabulary_size):
            raise ValueError(f"token id out of range [0, {self.vocabulary_size}): {ids.min()}..{ids.max()}")
        special = np.isin(ids, self._dropped_ids())
        if skip_special_tokens:
            return self._decode_ids(ids[~special])
        names = {self.token_to_id(t): t for t in self.special_tokens}
        out, start = [], 0
        for index in np.flatnonzero(special):
            out.append(self._decode_ids(ids[start:index]))
            out.append(names[int(ids[index])])
            start = index + 1
        out.append(self._decode_ids(ids[start:]))
        return "".join(out)

    def _dropped_ids(self):
        return [i for i in self.special_ids if i != self.unk_id]

    def _decode_ids(self, ids):
        """Decodes ids free of special tokens except `<unk>`, which decodes to U+FFFD (subclasses)."""
        raise NotImplementedError

    # --- graph-side encoding -------------------------------------------------------------
    def tf_encode(self, texts):
        """Encodes a string tensor: scalar -> 1-D int32 ids, [batch] -> ragged [batch, None].

        Pure TensorFlow / tensorflow-text ops: it runs in `tf.data` and in exported SavedModels.
        """
        import tensorflow as tf
        import tensorflow_text as tf_text

        texts = tf.convert_to_tensor(texts, tf.string)
        scalar = texts.shape.rank == 0
        # Line by line (each line keeps its "\n"): regex splitting is superlinear in the
        # length of one string, and no token spans a newline's end.
        lines = split_lines(tf.reshape(texts, [-1]))
        pattern = self._special_regex()
        pieces = tf_text.regex_split(lines.flat_values, pattern, keep_delim_regex_pattern=pattern)
        flat = pieces.flat_values
        special = self._special_table().lookup(flat)
        is_special = special >= 0
        plain = tf.cast(self._tf_encode_text(flat), tf.int32)
        plain = tf.ragged.boolean_mask(plain, plain.with_flat_values(tf.gather(~is_special, plain.value_rowids())))
        specials = tf.ragged.boolean_mask(special[:, None], is_special[:, None])
        per_piece = tf.concat([plain, specials], axis=1)
        per_line = pieces.with_flat_values(per_piece).merge_dims(1, 2)
        ids = lines.with_flat_values(per_line).merge_dims(1, 2)
        return ids[0] if scalar else ids

    def _special_table(self):
        import tensorflow as tf

        if getattr(self, "_tf_special_table", None) is None:
            with tf.init_scope():  # an eager resource, also when first built while tracing
                self._tf_special_table = tf.lookup.StaticHashTable(
                    tf.lookup.KeyValueTensorInitializer(
                        tf.constant(self.special_tokens), tf.constant(self.special_ids, tf.int32)
                    ),
                    default_value=-1,
                )
        return self._tf_special_table

    def _tf_encode_text(self, texts):
        """Encodes a 1-D string tensor free of special tokens to ragged [n, None] ids."""
        raise NotImplementedError

    def tf_decode(self, ids):
        """Decodes int ids ([time] or [batch, time], dense or ragged) to a string tensor.

        Special tokens are dropped, `<unk>` decodes to U+FFFD. Pure TensorFlow ops.
        """
        import tensorflow as tf

        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.convert_to_tensor(ids)
            if ids.shape.rank == 1:
                return self.tf_decode(tf.RaggedTensor.from_tensor(ids[None]))[0]
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.cast(ids, tf.int32)
        dropped = tf.constant(self._dropped_ids(), tf.int32)
        keep = tf.reduce_all(ids.flat_values[:, None] != dropped[None], axis=1)
        ids = tf.ragged.boolean_mask(ids, ids.with_flat_values(keep))
        return self._tf_decode_ids(ids)

    def _tf_decode_ids(self, ids):
        """Decodes ragged [batch, None] int32 ids (no specials but `<unk>`) to [batch] strings."""
        raise NotImplementedError

    def fingerprint(self):
        """A hash of the tokenizer's full state: equal fingerprints encode text identically."""
        payload = json.dumps({"kind": self.kind, "config": self.get_config()}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def _graph_tables(self):
        """The tables `_build_tables` returns, built once as eager resources (also when first
        needed while a `tf.function` or SavedModel signature is being traced)."""
        if getattr(self, "_tables", None) is None:
            import tensorflow as tf

            with tf.init_scope():
                self._tables = self._build_tables()
        return self._tables

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


def graph_call(layer, method, inputs):
    """Calls a keras-hub tokenizer's `tokenize` / `detokenize` so that it returns tensors.

    In eager mode keras-hub converts outputs to numpy / lists; inside a graph (tf.data, a
    tf.function, a SavedModel) it returns tensors. Eager calls therefore go through one
    tf.function per layer and method, traced once for any batch size ([None] strings in,
    ragged [None, None] int32 ids in).
    """
    import tensorflow as tf

    if not tf.executing_eagerly():
        return getattr(layer, method)(inputs)
    functions = layer.__dict__.setdefault("_kerasllm_graph_fns", {})
    if method not in functions:
        spec = (
            tf.TensorSpec([None], tf.string) if method == "tokenize"
            else tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1)
        )
        functions[method] = tf.function(getattr(layer, method), input_signature=[spec])
    return functions[method](inputs)


def as_ragged(ids):
    import tensorflow as tf

    # keras-hub returns a dense tensor when every row has the same length.
    return ids if isinstance(ids, tf.RaggedTensor) else tf.RaggedTensor.from_tensor(ids)


def lines_of(text):
    """Python twin of `split_lines`: the lines of `text`, each keeping its "\n"."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def split_lines(texts):
    """Splits a 1-D string tensor into ragged [n, lines] lines, each keeping its "\n"."""
    import tensorflow as tf

    lines = tf.strings.split(texts, "\n")
    lengths = lines.row_lengths()
    position = tf.range(tf.size(lines.flat_values, out_type=tf.int64)) - tf.repeat(lines.row_starts(), lengths)
    last = position == tf.repeat(lengths - 1, lengths)
    values = tf.where(last, lines.flat_values, tf.strings.join([lines.flat_values, "\n"]))
    return lines.with_flat_values(values)


def special_spans(units, specials):
    """Where special tokens occur in text given as a 1-D array of units (codepoints or bytes).

    Matches as `re.split` on the longest-first alternation of the specials does: leftmost
    first, the longest special at a position, never overlapping. Candidates are found with a
    few vectorized comparisons; only overlapping candidates (rare) are resolved in Python.

    Args:
        units: 1-D integer array, the text.
        specials: `(units of the special token, its id)` pairs.

    Returns:
        `(starts, ends, ids)`: int64 arrays, in text order.

    Examples:

    >>> text = np.frombuffer(b"a<s><s>>b", np.uint8)
    >>> [a.tolist() for a in special_spans(text, [(np.frombuffer(b"<s>", np.uint8), 7)])]
    [[1, 4], [4, 7], [7, 7]]
    """
    # (16 MB of WikiText-like text, ~90,000 literal "<unk>": char 17.2 s -> 1.5 s against re.split)
    starts, lengths, ids = [], [], []
    for token, token_id in specials:
        size = len(token)
        if not size or size > len(units):
            continue
        found = np.flatnonzero(units[: len(units) - size + 1] == token[0])
        for k in range(1, size):
            found = found[units[found + k] == token[k]]
        starts.append(found)
        lengths.append(np.full(len(found), size, np.int64))
        ids.append(np.full(len(found), token_id, np.int64))
    if not starts:
        return (np.zeros([0], np.int64),) * 3
    starts, lengths, ids = (np.concatenate(a).astype(np.int64) for a in (starts, lengths, ids))
    order = np.lexsort((-lengths, starts))  # by start, the longest first
    starts, lengths, ids = starts[order], lengths[order], ids[order]
    ends = starts + lengths
    if len(starts) > 1 and np.any(starts[1:] < ends[:-1]):  # overlaps: keep them greedily
        keep, last = np.zeros(len(starts), bool), -1
        for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
            if start >= last:
                keep[i], last = True, end
        starts, ends, ids = starts[keep], ends[keep], ids[keep]
    return starts, ends, ids


def replace_spans(ids, starts, ends, span_ids):
    """`ids` with each span `[start, end)` replaced by its one id (int32; `ids` may be reused).

    Examples:

    >>> replace_spans(np.arange(6), np.array([1, 4]), np.array([3, 5]), np.array([9, 8])).tolist()
    [0, 9, 3, 8, 5]
    """
    ids = np.asarray(ids, np.int32)
    if not len(starts):
        return ids
    ids[starts] = span_ids
    extra = ends - starts - 1  # the units after each span's first: dropped
    if not extra.any():
        return ids
    first = np.repeat(starts + 1 - np.cumsum(extra) + extra, extra)
    keep = np.ones(len(ids), bool)
    keep[first + np.arange(len(first))] = False
    return ids[keep]


def count_codepoints(texts, chunk_chars=1 << 22):
    """Occurrences of every Unicode codepoint in an iterable of strings, in one streaming pass.

    Texts are joined into chunks of about `chunk_chars` characters, so millions of short texts
    cost a few `np.bincount` calls, not millions.

    Returns:
        An int64 array of 0x110000 counts, indexed by codepoint.

    Examples:

    >>> counts = count_codepoints(["aab", "红"])
    >>> int(counts[ord("a")]), int(counts[ord("红")]), int(counts.sum())
    (2, 1, 4)
    """
    counts = np.zeros(0x110000, np.int64)
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chunk_chars:
            counts += codepoint_counts("".join(batch))
            batch, size = [], 0
    if batch:
        counts += codepoint_counts("".join(batch))
    return counts


def codepoint_counts(text):
    """Occurrences of every codepoint in `text`: an int64 array of 0x110000 counts.

    ASCII is counted on the UTF-8 bytes (a 256-bin `bincount`); only the bytes of the other
    characters, which spell exactly those characters in UTF-8, are decoded and counted by
    codepoint (6x faster than a `bincount` of the whole text's codepoints on English text).

    Examples:

    >>> counts = codepoint_counts("aab 红红")
    >>> int(counts[ord("a")]), int(counts[ord("红")]), int(counts.sum())
    (2, 2, 6)
    """
    counts = np.zeros(0x110000, np.int64)
    units = np.frombuffer(text.encode("utf-8"), np.uint8)
    counts[:128] = np.bincount(units, minlength=256)[:128]
    other = units[units >= 0x80]
    if len(other):
        codepoints = np.frombuffer(other.tobytes().decode("utf-8").encode("utf-32-le"), np.uint32)
        counts += np.bincount(codepoints, minlength=0x110000)
    return counts
