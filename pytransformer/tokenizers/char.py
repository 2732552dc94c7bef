"""A character-level tokenizer: one id per distinct character of a corpus, in sorted order."""

from __future__ import annotations

import json

import numpy as np


class CharTokenizer:
    """One id per character of a fixed alphabet; encode(text) -> list[int], decode(ids) -> str; saved as JSON. No
    special tokens, so no end-of-turn ids (stop_ids is empty)."""

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

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def encode_array(self, text: str) -> np.ndarray:
        """encode as a 1-D int64 array (a training corpus)."""
        return np.asarray(self.encode(text), np.int64)

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
