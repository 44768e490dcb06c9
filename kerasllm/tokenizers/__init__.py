"""Tokenizers: one interface (`Tokenizer`) for every kind, selected by `data.tokenizer`.

| kind | class | vocabulary |
| --- | --- | --- |
| `char` | `CharTokenizer` | Unicode codepoints seen in training |
| `byte` | `ByteTokenizer` | 256 UTF-8 bytes |
| `word` | `WordTokenizer` | words by frequency (min count, max size) |
| `jieba` | `JiebaTokenizer` | Chinese words from jieba segmentation (extra `[zh]`) |
| `wordpiece` | `WordPieceTokenizer` | keras-hub / tensorflow-text WordPiece |
| `sentencepiece` | `SentencePieceTokenizer` | SentencePiece unigram or BPE |
| `bpe` | `BPETokenizer` | GPT-2 style byte-level BPE (keras-hub BytePairTokenizer) |
| `pretrained` | `PretrainedTokenizer` | a published checkpoint's own tokenizer (`tokenizer.json` / `tokenizer.model`) |
"""

from kerasllm.tokenizers.base import (
    Tokenizer,
    get_tokenizer_class,
    load_tokenizer,
    register_tokenizer,
    tokenizer_kinds,
)
from kerasllm.tokenizers.bpe import BPETokenizer
from kerasllm.tokenizers.byte import ByteTokenizer
from kerasllm.tokenizers.char import CharTokenizer
from kerasllm.tokenizers.jieba import JiebaTokenizer
from kerasllm.tokenizers.pretrained import PretrainedTokenizer
from kerasllm.tokenizers.sentencepiece import SentencePieceTokenizer
from kerasllm.tokenizers.word import WordTokenizer
from kerasllm.tokenizers.wordpiece import WordPieceTokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "JiebaTokenizer",
    "PretrainedTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "WordPieceTokenizer",
    "WordTokenizer",
    "get_tokenizer_class",
    "load_tokenizer",
    "register_tokenizer",
    "tokenizer_kinds",
]
