"""BERT's WordPiece tokenizer, as Hugging Face `BertTokenizer` / `tokenizers` BertWordPiece do it:
clean the text, split CJK characters, lowercase and strip accents (uncased models), split on whitespace and
punctuation, then greedy longest-match-first WordPiece with '##' continuations; a word with no split (or longer
than 100 characters) becomes [UNK]."""

from __future__ import annotations

import unicodedata

import numpy as np

from .models import WordPieceModel
from .normalizers import clean_text, lowercase, strip_accents


def _is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class WordPieceTokenizer:
    """BERT's tokenizer from a vocab.txt: encode(text) -> [CLS] ids [SEP] (list[int]), batch_encode, decode."""

    def __init__(self, vocab: list[str], lowercase=True, strip_accents=None, max_length=512,
                 unk="[UNK]", cls="[CLS]", sep="[SEP]", pad="[PAD]", mask="[MASK]", max_chars_per_word=100):
        self.vocab = {tok: i for i, tok in enumerate(vocab)}
        self.inv = list(vocab)
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.max_length = max_length
        self.max_chars_per_word = max_chars_per_word
        for name, tok in (("unk", unk), ("cls", cls), ("sep", sep), ("pad", pad)):
            if tok not in self.vocab:
                raise ValueError(f"special token {tok!r} is not in the vocabulary")
            setattr(self, f"{name}_id", self.vocab[tok])
        self.mask_id = self.vocab.get(mask)
        self.model = WordPieceModel(self.vocab, unk, "##", max_chars_per_word)
        self._chunk_cache: dict[str, list[int]] = {}

    @classmethod
    def from_file(cls, path, **kwargs) -> "WordPieceTokenizer":
        with open(path, encoding="utf-8") as f:
            return cls([line.rstrip("\n") for line in f], **kwargs)

    @property
    def vocab_size(self):
        return len(self.inv)

    # --- pre-tokenization --------------------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        return clean_text(text)

    def _split_chunk(self, chunk: str) -> list[str]:
        """One whitespace-free chunk -> words: lowercased, accents stripped, punctuation split off."""
        if self.lowercase:
            chunk = lowercase(chunk)
        if self.strip_accents and not chunk.isascii():
            chunk = strip_accents(unicodedata.normalize("NFD", chunk))
        words, current = [], []
        for ch in chunk:
            if _is_punctuation(ch):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(ch)
            else:
                current.append(ch)
        if current:
            words.append("".join(current))
        return words

    def basic_tokenize(self, text: str) -> list[str]:
        return [w for chunk in self._clean(text).split(" ") if chunk for w in self._split_chunk(chunk)]

    def _chunk_ids(self, chunk: str) -> list[int]:
        ids = self._chunk_cache.get(chunk)
        if ids is None:
            ids = [i for w in self._split_chunk(chunk) for i in self.wordpiece(w)]
            if len(self._chunk_cache) < 200_000:
                self._chunk_cache[chunk] = ids
        return ids

    def wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match-first pieces of one word (models.WordPieceModel)."""
        return self.model.tokenize(word)

    # --- public --------------------------------------------------------------------------------------------------

    def encode(self, text: str, max_length: int | None = None, add_special_tokens=True) -> list[int]:
        """[CLS] pieces [SEP], truncated so that the whole fits max_length (default: the tokenizer's)."""
        ids = [i for chunk in self._clean(text).split(" ") if chunk for i in self._chunk_ids(chunk)]
        limit = max_length or self.max_length
        if add_special_tokens:
            return [self.cls_id] + ids[: max(limit - 2, 0)] + [self.sep_id]
        return ids[:limit]

    def batch_encode(self, texts, max_length=None):
        """-> input_ids (B, T) int64 padded with [PAD], attention_mask (B, T) int64."""
        seqs = [self.encode(t, max_length) for t in texts]
        T = max(len(s) for s in seqs)
        ids = np.full((len(seqs), T), self.pad_id, np.int64)
        mask = np.zeros((len(seqs), T), np.int64)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = s
            mask[i, :len(s)] = 1
        return ids, mask

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            tok = self.inv[int(i)]
            if tok.startswith("##") and out:
                out[-1] += tok[2:]
            else:
                out.append(tok)
        return " ".join(out)
