"""Augmentation of classification / fine-tuning text: deletion, swap, insertion, synonyms.

Text is cut into words and single Han characters by `kerasllm.tokenizers.word.WORD_PATTERN`,
so English and Chinese are both handled; augmented text is re-joined with single spaces
(none between Han characters). Random
deletion and random swap are keras-hub's `RandomDeletion` and `RandomSwap` layers; insertion
(EDA's: a synonym of a random word, or a copy of one when no table is given) and synonym
substitution from a user table have no keras-hub layer and are done with numpy. Every
operation has a rate and draws from `(seed, epoch)`, so a given epoch is reproducible.
"""

import re

import keras_hub
import numpy as np
import tensorflow as tf

from kerasllm.data.corpus import read_text_file
from kerasllm.errors import DataError
from kerasllm.tokenizers.word import split_words

_WHITESPACE = [" ", "\n", "\t", "\r"]
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")


def load_synonyms(path):
    """Reads a synonym table: one `word<TAB>syn1,syn2,...` per line (UTF-8, `#` comments).

    Examples:

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "syn.tsv")
    >>> _ = open(path, "w").write("good\\tgreat,fine\\n")
    >>> load_synonyms(path)
    {'good': ['great', 'fine']}
    """
    table = {}
    for number, line in enumerate(read_text_file(path).split("\n"), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, tab, rest = line.partition("\t")
        synonyms = [s.strip() for s in rest.split(",") if s.strip()]
        if not tab or not word.strip() or not synonyms:
            raise DataError(f"{path}, line {number}: expected 'word<TAB>synonym,synonym,...', got {line!r}")
        table.setdefault(word.strip(), []).extend(synonyms)
    if not table:
        raise DataError(f"{path}: the synonym table is empty")
    return table


class TextAugmenter:
    """Random deletion, swap, insertion and synonym substitution of words, each with a rate.

    Args:
        deletion: probability of deleting each word (keras-hub `RandomDeletion`).
        swap: share of words chosen for swapping (keras-hub `RandomSwap`).
        insertion: insertions per word: `round(insertion * n_words)`, at least one when > 0.
        synonym: probability of replacing each word that has an entry in `synonyms`.
        synonyms: dict word -> list of synonyms (see `load_synonyms`).
        seed: base seed; `augment(texts, epoch)` draws from `(seed, epoch)`.

    Examples:

    >>> aug = TextAugmenter(synonym=1.0, synonyms={"good": ["great"]}, seed=0)
    >>> aug(["a good film"])
    ['a great film']
    """

    def __init__(self, deletion=0.0, swap=0.0, insertion=0.0, synonym=0.0, synonyms=None, seed=1337):
        for name, rate in (("deletion", deletion), ("swap", swap), ("insertion", insertion), ("synonym", synonym)):
            if not 0.0 <= rate <= 1.0:
                raise DataError(f"augmentation {name} rate = {rate}: expected a number in [0, 1]")
        if synonym and not synonyms:
            raise DataError("synonym substitution needs a synonym table (data.synonyms = PATH)")
        self.deletion, self.swap, self.insertion, self.synonym = deletion, swap, insertion, synonym
        self.synonyms = {k.lower(): v for k, v in (synonyms or {}).items()}
        self.seed = seed

    @property
    def active(self):
        return any((self.deletion, self.swap, self.insertion, self.synonym))

    def get_config(self):
        return {"deletion": self.deletion, "swap": self.swap, "insertion": self.insertion,
                "synonym": self.synonym, "synonyms": self.synonyms, "seed": self.seed}

    def _synonym_of(self, word, rng):
        options = self.synonyms.get(word.strip().lower())
        if not options:
            return None
        choice = options[rng.integers(len(options))]
        return (" " + choice) if word.startswith(" ") else choice

    def __call__(self, texts, epoch=0):
        """Augments a list of strings; returns a new list of the same length."""
        if not self.active or not len(texts):
            return list(texts)
        rng = np.random.default_rng([self.seed, epoch])
        rows = [[w.decode("utf-8") for w in row] for row in split_words(tf.constant(list(texts))).to_list()]
        out = []
        for row in rows:
            words = [i for i, w in enumerate(row) if w.strip()]
            if self.synonym:
                for i in words:
                    if rng.random() < self.synonym:
                        row[i] = self._synonym_of(row[i], rng) or row[i]
            if self.insertion and words:
                for _ in range(max(1, round(self.insertion * len(words)))):
                    source = row[words[rng.integers(len(words))]]
                    new = self._synonym_of(source, rng) or source
                    row.insert(int(rng.integers(len(row) + 1)), new)
            out.append(row)
        ragged = tf.ragged.constant(out, dtype=tf.string) if out else None
        layer_seed = int(rng.integers(2**31 - 1))
        if self.swap:
            ragged = keras_hub.layers.RandomSwap(self.swap, skip_list=_WHITESPACE,
                                                 seed=layer_seed, dtype="string")(ragged)
        if self.deletion:
            ragged = keras_hub.layers.RandomDeletion(self.deletion, skip_list=_WHITESPACE, seed=layer_seed + 1,
                                                     dtype="string")(ragged)
        rows = ragged if isinstance(ragged, list) else ragged.to_list()
        return [_join(row, original) for row, original in zip(rows, texts)]


def _join(words, original):
    """Joins words with single spaces, except between Han characters (whitespace normalized)."""
    words = [w.decode("utf-8") if isinstance(w, bytes) else w for w in words]
    words = [w.strip() for w in words if w.strip()]
    out = []
    for word in words:
        if out and not (_HAN.match(out[-1][-1]) and _HAN.match(word[0])):
            out.append(" ")
        out.append(word)
    return "".join(out)
