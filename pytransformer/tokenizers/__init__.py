"""Tokenizers, no runtime dependency: every Hugging Face folder (tokenizer.json with BPE, WordPiece or Unigram;
GPT-2's vocab.json + merges.txt; BERT's vocab.txt) and every GGUF vocabulary (byte-level BPE, SentencePiece), with
special tokens, end-of-turn ids and chat templates; char-level for training from scratch.

    from_folder(path)            -> Tokenizer (tokenizer.json preferred, else vocab.json + merges.txt, else vocab.txt)
    from_gguf_metadata(metadata) -> the tokenizer of a GGUF file
Every tokenizer's encode(text) returns list[int]."""

from .bpe import ByteLevelBPETokenizer, GPT2Tokenizer
from .char import CharTokenizer
from .loading import from_folder, from_gguf_metadata, from_tokenizer_json
from .pipeline import Tokenizer
from .wordpiece import WordPieceTokenizer

__all__ = ["ByteLevelBPETokenizer", "CharTokenizer", "GPT2Tokenizer", "Tokenizer", "WordPieceTokenizer",
           "from_folder", "from_gguf_metadata", "from_tokenizer_json"]
