"""tokenizer.json normalizers as functions str -> str: NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents, Replace,
Prepend, BertNormalizer and Sequence (what Llama 2, Gemma, Phi-3, BERT and others use), each as Hugging Face's
`tokenizers` defines it."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from .unicode_regex import category_class, compile_pattern


def _is_control(ch):
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def _is_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


# ASCII fast path of the cleaning step: tab/newline/return become spaces, other control characters go
_ASCII_CLEAN = {i: None for i in range(32)} | {9: " ", 10: " ", 13: " ", 127: None}


def clean_text(text: str, drop_control=True, space_cjk=True) -> str:
    """BERT's cleaning: drop NUL, U+FFFD and control characters, put spaces around CJK characters, turn every
    whitespace into ' ' (each step as Hugging Face's BertNormalizer's clean_text / handle_chinese_chars)."""
    if drop_control and text.isascii():
        return text.translate(_ASCII_CLEAN)
    chars = []
    for ch in text:
        cp = ord(ch)
        if drop_control and (cp == 0 or cp == 0xFFFD or _is_control(ch)):
            continue
        if space_cjk and _is_cjk(cp):
            chars += [" ", ch, " "]
        elif drop_control and _is_whitespace(ch):
            chars.append(" ")
        else:
            chars.append(ch)
    return "".join(chars)


def lowercase(text: str) -> str:
    """Each character lowercased on its own, as Rust's char::to_lowercase in `tokenizers` (str.lower would write a
    word-final capital sigma as ς)."""
    return text.lower() if "\u03a3" not in text else "".join(c.lower() for c in text)


def _replace(spec):
    pattern, content = spec.get("pattern") or {}, spec.get("content", "")
    if "String" in pattern:
        s = pattern["String"]
        return lambda text: text.replace(s, content) if s else text
    if "Regex" in pattern:
        rx = compile_pattern(pattern["Regex"])
        return lambda text: rx.sub(lambda m: content, text)
    raise ValueError(f"Replace needs a String or Regex pattern, got {pattern!r}")


def _strip(spec):
    left, right = spec.get("strip_left", True), spec.get("strip_right", True)

    def strip(text):
        if left:
            text = text.lstrip()
        return text.rstrip() if right else text
    return strip


@lru_cache(maxsize=None)
def _nonspacing_marks() -> re.Pattern:
    return re.compile(f"[{category_class('Mn')}]")


def strip_accents(text: str) -> str:
    """Drop the combining marks (Mn) of the text's NFD form; the caller has decomposed it (as in `tokenizers`)."""
    return text if text.isascii() else _nonspacing_marks().sub("", text)


def _bert(spec):
    clean, chinese = spec.get("clean_text", True), spec.get("handle_chinese_chars", True)
    lower = spec.get("lowercase", True)
    accents = spec.get("strip_accents")
    accents = lower if accents is None else accents
    def bert(text):
        if clean or chinese:
            text = clean_text(text, drop_control=clean, space_cjk=chinese)
        if accents:
            text = strip_accents(unicodedata.normalize("NFD", text))
        return lowercase(text) if lower else text
    return bert


def _prepend(spec):
    prefix = spec.get("prepend", "")
    return lambda text: prefix + text if text else text


def _sequence(spec):
    steps = [build(s) for s in spec.get("normalizers", [])]

    def sequence(text):
        for step in steps:
            text = step(text)
        return text
    return sequence


_BUILDERS = {
    "NFC": lambda s: lambda t: unicodedata.normalize("NFC", t),
    "NFD": lambda s: lambda t: unicodedata.normalize("NFD", t),
    "NFKC": lambda s: lambda t: unicodedata.normalize("NFKC", t),
    "NFKD": lambda s: lambda t: unicodedata.normalize("NFKD", t),
    "Lowercase": lambda s: lowercase,
    "StripAccents": lambda s: strip_accents,
    "Strip": _strip,
    "Replace": _replace,
    "Prepend": _prepend,
    "BertNormalizer": _bert,
    "Sequence": _sequence,
}


def build(spec):
    """The normalizer a tokenizer.json "normalizer" object describes (None: the identity)."""
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in _BUILDERS:
        raise ValueError(f"unsupported normalizer {kind!r} (supported: {', '.join(_BUILDERS)})")
    return _BUILDERS[kind](spec)
