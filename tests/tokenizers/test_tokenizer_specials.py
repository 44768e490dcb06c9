"""The vectorized special-token search of the char and byte tokenizers gives the ids of the
regex split it replaced, overlapping and adjacent specials included."""

import random

import numpy as np
import pytest

from kerasllm.tokenizers import ByteTokenizer, CharTokenizer
from kerasllm.tokenizers.base import Tokenizer

SPECIALS = (
    ["<pad>", "<unk>", "<bos>", "<eos>"],
    ["<pad>", "<unk>", "<bos>", "<eos>", "<s>", "aa", "a", "<s>>"],  # overlapping and nested
)


@pytest.mark.parametrize("specials", SPECIALS)
def test_vectorized_encode_equals_the_regex_split(specials):
    rng = random.Random(0)
    pieces = list("ab<>/s e\n红🙂") + ["<unk>", "<s>", "<eos>", "<bos>", "<s", "s>", "<<s>>", "aa"]
    tokenizers = [CharTokenizer(list("ab<>/s e\n红"), special_tokens=specials), ByteTokenizer(special_tokens=specials)]
    for _ in range(600):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        for tok in tokenizers:
            ids = tok.encode(text)
            assert ids.dtype == np.int32
            np.testing.assert_array_equal(ids, Tokenizer.encode(tok, text), err_msg=f"{tok.kind} {text!r}")
