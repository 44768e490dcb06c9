"""Tokenizers: one interface (`Tokenizer`) for every kind, selected by `data.tokenizer`."""

from kerasllm.tokenizers.base import (
    Tokenizer,
    get_tokenizer_class,
    load_tokenizer,
    register_tokenizer,
    tokenizer_kinds,
)
from kerasllm.tokenizers.char import CharTokenizer

__all__ = [
    "CharTokenizer",
    "Tokenizer",
    "get_tokenizer_class",
    "load_tokenizer",
    "register_tokenizer",
    "tokenizer_kinds",
]
