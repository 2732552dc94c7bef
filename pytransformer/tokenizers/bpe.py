"""GPT-2's byte-level BPE (from `encoder.json` + `vocab.bpe`), without the `regex` module.

Text is split like GPT-2's pattern  's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
(spelt out below with unicodedata categories), each piece's UTF-8 bytes are mapped to printable characters,
and the merges are applied lowest rank first."""

from __future__ import annotations

import json
import unicodedata
from functools import lru_cache

import numpy as np

try:  # compiled hot loop (Cython, built by the same CMake build); the pure-Python merge below otherwise
    from ._fast import bpe_merge as _bpe_merge_fast
except ImportError:
    _bpe_merge_fast = None


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _kind(ch):
    if ch.isspace():
        return "s"
    cat = unicodedata.category(ch)
    if cat[0] == "L":
        return "L"
    if cat[0] == "N":
        return "N"
    return "P"


_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def pre_tokenize(text: str) -> list[str]:
    """GPT-2's regex split, scanning left to right with the same alternatives in the same order."""
    out, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "'":
            for c in _CONTRACTIONS:
                if text.startswith(c, i):
                    break
            else:
                c = None
            if c:
                out.append(c)
                i += len(c)
                continue
        start = i
        j = i + 1 if ch == " " and i + 1 < n and _kind(text[i + 1]) != "s" else i
        k = _kind(text[j])
        if k in ("L", "N"):
            j += 1
            while j < n and _kind(text[j]) == k:
                j += 1
            out.append(text[start:j])
            i = j
            continue
        if k == "P":
            j += 1
            while j < n and _kind(text[j]) == "P":
                j += 1
            out.append(text[start:j])
            i = j
            continue
        # whitespace: \s+(?!\S) takes the run but leaves its last space to the next word; else \s+
        j = i
        while j < n and text[j].isspace():
            j += 1
        if j < n and j - i > 1:
            j -= 1  # the last whitespace character goes with the following token
        out.append(text[i:j])
        i = j
    return out


def bpe_merge(word: list, ranks: dict) -> list:
    """Merge the adjacent pair of lowest rank until none is left (pure Python; _fast.pyx is the same)."""
    while len(word) > 1:
        best, best_rank = None, None
        for i in range(len(word) - 1):
            r = ranks.get((word[i], word[i + 1]))
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            break
        a, b = word[best], word[best + 1]
        merged, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and word[i] == a and word[i + 1] == b:
                merged.append(a + b)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


class GPT2Tokenizer:
    def __init__(self, encoder: dict, merges: list[tuple[str, str]]):
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def from_files(cls, encoder_json, vocab_bpe) -> "GPT2Tokenizer":
        with open(encoder_json, encoding="utf-8") as f:
            encoder = json.load(f)
        with open(vocab_bpe, encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:] if line and not line.startswith("#version")]
        return cls(encoder, merges)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, piece: str) -> list[int]:
        cached = self.cache.get(piece)
        if cached is not None:
            return cached
        word = [self.byte_encoder[b] for b in piece.encode("utf-8")]
        word = (_bpe_merge_fast or bpe_merge)(word, self.ranks)
        ids = [self.encoder[t] for t in word]
        if len(self.cache) < 100_000:
            self.cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        return [i for piece in pre_tokenize(text) for i in self._bpe(piece)]

    def encode_array(self, text: str) -> np.ndarray:
        return np.array(self.encode(text), np.int64)

    def decode(self, ids) -> str:
        data = bytes(self.byte_decoder[c] for i in ids for c in self.decoder[int(i)])
        return data.decode("utf-8", errors="replace")
