"""Byte-level BPE without the `regex` module: GPT-2's (from `encoder.json` + `vocab.bpe`) and the GGUF vocabularies
of the same kind (`tokenizer.ggml.model` "gpt2": SmolLM2 and others, from the file's metadata).

Text is split by GPT-2's pattern (splitters.GPT2), each piece's UTF-8 bytes are mapped to printable characters,
and the merges are applied lowest rank first (models.BPEModel). The "smollm" pre-tokenizer first splits every digit
off on its own (Hugging Face's Digits(individual_digits=True), llama.cpp's \\p{N} split). Special tokens (a GGUF
vocabulary's control and user-defined tokens: <|im_start|>, ...) are matched in the text before any of that, as
Hugging Face's tokenizers match added tokens."""

from __future__ import annotations

import json
import re
import sys
from functools import lru_cache

import numpy as np

from . import splitters
from .byte_pairs import bytes_to_unicode
from .models import BPEModel
from .stops import stop_ids
from .textstream import text_pieces
from .unicode_regex import category_class


def pre_tokenize(text: str) -> list[str]:
    """GPT-2's split (splitters.GPT2: the pattern `tokenizers` runs in Oniguruma; \\s is Unicode White_Space).
    Every character falls in one alternative, so the matches are the pieces."""
    return splitters.findall(splitters.GPT2)(text)


class GPT2Tokenizer:
    """GPT-2's byte-level BPE: GPT-2's split, then models.BPEModel over the byte alphabet (a byte the vocabulary
    lacks is dropped, as Hugging Face's and llama.cpp's tokenizers drop it: SmolLM2's has no symbol for 0x04).
    A merge whose joining is not a token is left out (it could only make a piece with no id)."""

    def __init__(self, encoder: dict, merges: list[tuple[str, str]]):
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.ranks = {pair: i for i, pair in enumerate(merges) if pair[0] + pair[1] in encoder}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.model = BPEModel(encoder, self.ranks, byte_level=True)

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

    def encode(self, text: str) -> list[int]:
        ids = []
        self.model.encode(pre_tokenize(text), ids)
        return ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.array(self.encode(text), np.int64)

    def decode(self, ids) -> str:
        data = bytes(self.byte_decoder[c] for i in ids for c in self.decoder[int(i)])
        return data.decode("utf-8", errors="replace")


@lru_cache(maxsize=None)
def _numeric() -> re.Pattern:
    return re.compile(f"([{category_class('N')}])")


def split_digits(text: str) -> list[str]:
    """Every numeric character (Unicode N*) a piece of its own; the runs between them kept whole."""
    return [p for p in _numeric().split(text) if p]


PRE_TOKENIZERS = ("gpt2", "smollm")


# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


class ByteLevelBPETokenizer(GPT2Tokenizer):
    """A byte-level BPE vocabulary with special tokens and a pre-tokenizer of PRE_TOKENIZERS, as GGUF files carry
    them: encode(text) -> ids (special tokens in the text matched first), decode(ids) -> text, the chat template,
    and the ids that end a turn (stop_ids)."""

    def __init__(self, tokens: list[str], merges: list[tuple[str, str]], special: dict | None = None,
                 pre: str = "gpt2", bos_id=None, eos_id=None, eot_id=None, chat_template=None, add_bos=False):
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"unsupported pre-tokenizer {pre[:40]!r} (supported: {', '.join(PRE_TOKENIZERS)})")
        # the merges' symbols are tokens already: one (interned) string object each, shared by every table
        tokens = [sys.intern(t) for t in tokens]
        merges = [(sys.intern(a), sys.intern(b)) for a, b in merges]
        super().__init__({t: i for i, t in enumerate(tokens)}, merges)
        self.decoder = list(tokens)  # id -> token (ids are positions: a repeated token string keeps both ids)
        self.special = dict(special or {})  # text -> id, matched literally before pre-tokenizing
        self._special_by_length = sorted(self.special, key=len, reverse=True)
        self._special_ids = set(self.special.values())
        self.pre = pre
        self.bos_id, self.eos_id, self.eot_id, self.add_bos = bos_id, eos_id, eot_id, add_bos
        self.chat_template = chat_template
        self.source = "the GGUF file (tokenizer.chat_template)"  # where the template came from, for its errors

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)

    @property
    def kind(self) -> str:
        return f"byte-level BPE ({self.pre} pre-tokenizer)"

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a generated turn (stops.stop_ids: end-of-text, end-of-turn, <|im_end|> ...)."""
        return stop_ids(self.encoder.get, [self.eot_id, self.eos_id])

    def _split_special(self, text: str):
        """-> [(piece, id or None)]: special tokens found left to right (longest first at each place)."""
        if not self.special:
            return [(text, None)]
        out, i, start, n = [], 0, 0, len(text)
        firsts = {t[0] for t in self.special}
        while i < n:
            if text[i] in firsts:
                for t in self._special_by_length:
                    if text.startswith(t, i):
                        if start < i:
                            out.append((text[start:i], None))
                        out.append((t, self.special[t]))
                        i += len(t)
                        start = i
                        break
                else:
                    i += 1
            else:
                i += 1
        if start < n:
            out.append((text[start:], None))
        return out

    def _pieces(self, text: str):
        if self.pre == "smollm":
            return [p for part in split_digits(text) for p in pre_tokenize(part)]
        return pre_tokenize(text)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [self.bos_id] if add_special_tokens and self.add_bos and self.bos_id is not None else []
        for part, special_id in self._split_special(text):
            if special_id is not None:
                ids.append(special_id)
            else:
                self.model.encode(self._pieces(part), ids)
        return ids

    def token_bytes(self, i: int) -> bytes:
        token = self.decoder[int(i)]
        if int(i) in self._special_ids:
            return token.encode("utf-8")
        try:
            return bytes(self.byte_decoder[c] for c in token)
        except KeyError:  # a token outside the byte alphabet: its own text
            return token.encode("utf-8")

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        data = b"".join(self.token_bytes(i) for i in ids
                        if not (skip_special_tokens and int(i) in self._special_ids))
        return data.decode("utf-8", errors="replace")

    def stream_text(self, token_stream, skip_special_tokens=True, stop=()):
        """Text pieces as tokens arrive from a generation stream (arrays (1,) or ints): see textstream.text_pieces.
        Stop tokens end it and are not shown; a stop string (stop=) ends it and is not shown either."""
        return text_pieces(token_stream, lambda ids: self.decode(ids, skip_special_tokens), stop, self.stop_ids)

    def apply_chat_template(self, messages, add_generation_prompt=True, **extra) -> str:
        """The conversation as the model was trained to see it: the file's Jinja chat template (rendered with
        chat.py's limited sandbox), else (no template) the turns its special tokens name (chat.untemplated).
        extra: more template variables (tools=...)."""
        from .chat import render_chat, untemplated

        return render_chat(self.chat_template, messages, add_generation_prompt, source=self.source,
                           untemplated=untemplated(lambda t: t in self.encoder),
                           bos_token=self._token(self.bos_id), eos_token=self._token(self.eos_id), **extra)

    def _token(self, i):
        return "" if i is None else self.decoder[i]

    @classmethod
    def from_gguf_metadata(cls, metadata: dict, source="the GGUF file") -> "ByteLevelBPETokenizer":
        """From a GGUF file's tokenizer.ggml.* entries (model "gpt2"); ValueError names what is missing."""
        model = metadata.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"tokenizer model {model!r} is not supported (byte-level BPE, 'gpt2', is)")
        tokens, merges = metadata.get("tokenizer.ggml.tokens"), metadata.get("tokenizer.ggml.merges")
        if not isinstance(tokens, list) or not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
            raise ValueError("tokenizer.ggml.tokens and tokenizer.ggml.merges must be lists of strings")
        if not all(isinstance(t, str) and t for t in tokens):
            raise ValueError("tokenizer.ggml.tokens must be non-empty strings")
        vocab = set(tokens)
        pairs = []
        for m in merges:
            a, sep, b = m.partition(" ")
            if not sep or a not in vocab or b not in vocab or a + b not in vocab:
                raise ValueError(f"tokenizer.ggml.merges: {m[:40]!r} is not two tokens, separated by a space, whose "
                                 f"joining is a token")
            pairs.append((a, b))
        types = metadata.get("tokenizer.ggml.token_type")
        special = {}
        if isinstance(types, (list, tuple)):  # (as given in Python; a file's reader gives an array)
            types = np.asarray(types) if all(type(t) is int for t in types) else None
        if types is not None:
            if not isinstance(types, np.ndarray) or types.dtype.kind not in "iu" or len(types) != len(tokens):
                raise ValueError(f"tokenizer.ggml.token_type must be {len(tokens)} integers, one a token")
            special = {tokens[i]: i for i in np.flatnonzero((np.asarray(types) == CONTROL) |
                                                              (np.asarray(types) == USER_DEFINED)).tolist()}

        def token_id(key):
            v = metadata.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(tokens):
                raise ValueError(f"{key} must be a token id in [0, {len(tokens)}), got {v if isinstance(v, int) else type(v).__name__}")
            return v

        pre = metadata.get("tokenizer.ggml.pre", "gpt2")
        if not isinstance(pre, str) or not isinstance(metadata.get("tokenizer.chat_template", ""), str):
            raise ValueError("tokenizer.ggml.pre and tokenizer.chat_template must be strings")
        pre = "gpt2" if pre in ("default", "gpt-2") else pre
        tok = cls(tokens, pairs, special, pre, token_id("tokenizer.ggml.bos_token_id"),
                  token_id("tokenizer.ggml.eos_token_id"), token_id("tokenizer.ggml.eot_token_id"),
                  metadata.get("tokenizer.chat_template"), bool(metadata.get("tokenizer.ggml.add_bos_token", False)))
        tok.source = f"{source} (tokenizer.chat_template)"
        return tok
