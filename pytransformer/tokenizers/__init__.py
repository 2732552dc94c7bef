"""Tokenizers, no runtime dependency: char-level, BERT WordPiece, GPT-2 byte-level BPE and the byte-level BPE
vocabularies of GGUF files (with special tokens and chat templates)."""

from .bpe import ByteLevelBPETokenizer, GPT2Tokenizer
from .char import CharTokenizer
from .wordpiece import WordPieceTokenizer

__all__ = ["ByteLevelBPETokenizer", "CharTokenizer", "GPT2Tokenizer", "WordPieceTokenizer"]
