"""A character-level tokenizer: one id per distinct character of a corpus, in sorted order."""

from __future__ import annotations

import json

import numpy as np


class CharTokenizer:
    """One id per character (sorted); no special tokens, so no end-of-turn ids (stop_ids is empty)."""

    stop_ids = ()

    def __init__(self, chars):
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("characters must be distinct")
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.fromiter((self.index[c] for c in text), np.int64, len(text))
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": "".join(self.chars)})

    @classmethod
    def from_json(cls, s: str) -> "CharTokenizer":
        data = json.loads(s)
        if data.get("type") != "char":
            raise ValueError(f"not a char tokenizer: {data.get('type')!r}")
        return cls(data["chars"])
