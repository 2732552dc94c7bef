"""Tokenizers, no runtime dependency: char-level, BERT WordPiece and GPT-2 byte-level BPE."""

from .bpe import GPT2Tokenizer
from .char import CharTokenizer
from .wordpiece import WordPieceTokenizer

__all__ = ["CharTokenizer", "GPT2Tokenizer", "WordPieceTokenizer"]
