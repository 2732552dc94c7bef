"""Tokenizers: char-level (here); WordPiece and byte-level BPE arrive with the weights issue."""

from .char import CharTokenizer

__all__ = ["CharTokenizer"]
