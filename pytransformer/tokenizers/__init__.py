"""Tokenizers, no runtime dependency: char-level and BERT WordPiece."""

from .char import CharTokenizer
from .wordpiece import WordPieceTokenizer

__all__ = ["CharTokenizer", "WordPieceTokenizer"]
