"""Oniguruma patterns (what tokenizer.json's Split and Replace hold) as Python `re` patterns, without the `regex`
module: \\p{L}, \\p{N}, \\p{Lu}, ... become explicit character ranges from unicodedata, and \\s / \\S become Unicode's
White_Space set (Oniguruma's \\s; Python's also takes U+001C..U+001F). Lookarounds, (?i:...), possessive and lazy
quantifiers mean the same in both engines."""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache

WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


@lru_cache(maxsize=None)
def _ranges_by_category() -> dict:
    """{two-letter category: [(first, last), ...]} over every code point (one pass, ~0.5 s, once)."""
    out: dict = {}
    start, current = 0, unicodedata.category("\0")
    for cp in range(1, sys.maxunicode + 2):
        cat = unicodedata.category(chr(cp)) if cp <= sys.maxunicode else None
        if cat != current:
            out.setdefault(current, []).append((start, cp - 1))
            start, current = cp, cat
    return out


def _escape(cp: int) -> str:
    return f"\\U{cp:08x}"


@lru_cache(maxsize=None)
def category_class(name: str) -> str:
    """The body of a character class ([...] without brackets) for a category or category group: L, Lu, N, P..."""
    name = {"Letter": "L", "Number": "N", "Punctuation": "P", "Mark": "M", "Symbol": "S", "Separator": "Z",
            "Other": "C"}.get(name, name)
    cats = [c for c in _ranges_by_category() if c == name or (len(name) == 1 and c[0] == name)]
    if not cats:
        raise ValueError(f"unsupported Unicode property \\p{{{name}}}")
    ranges = sorted(r for c in cats for r in _ranges_by_category()[c])
    return "".join(_escape(a) if a == b else f"{_escape(a)}-{_escape(b)}" for a, b in ranges)


def translate(pattern: str) -> str:
    """An Oniguruma pattern -> the same pattern for Python's re (ValueError for what it cannot say)."""
    out, i, n, in_class = [], 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            if e in "pP":
                if i + 2 < n and pattern[i + 2] == "{":
                    j = pattern.find("}", i + 3)
                    if j < 0:
                        raise ValueError(f"unterminated \\{e}{{ in pattern {pattern!r}")
                    name, i = pattern[i + 3:j], j + 1
                else:
                    name, i = pattern[i + 2:i + 3], i + 3
                out.append(_class(category_class(name.lstrip("^")), (e == "P") != name.startswith("^"), in_class,
                                  pattern))
                continue
            if e in "sS":
                out.append(_class(WHITE_SPACE, e == "S", in_class, pattern))
                i += 2
                continue
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":  # a leading ] is a literal
                out.append("\\]")
                i += 1
            continue
        if c == "[" and in_class:
            if pattern.startswith("[:", i):
                raise ValueError(f"POSIX classes are not supported in pattern {pattern!r}")
            out.append("\\[")
            i += 1
            continue
        if c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


def _class(body, negated, in_class, pattern):
    if not in_class:
        return f"[{'^' if negated else ''}{body}]"
    if negated:
        raise ValueError(f"a negated property inside [...] is not supported in pattern {pattern!r}")
    return body


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(translate(pattern))
    except re.error as e:
        raise ValueError(f"pattern {pattern!r} does not compile: {e}") from None


@lru_cache(maxsize=None)
def class_table() -> bytes:
    """One byte per code point for the compiled splitters (_fast.Splitter): bit 1 \\p{L}, 2 \\p{N}, 4 \\s (the
    White_Space set above), 8 \\p{P}."""
    import numpy as np

    table = np.zeros(sys.maxunicode + 1, np.uint8)
    for category, ranges in _ranges_by_category().items():
        bit = {"L": 1, "N": 2, "P": 8}.get(category[0], 0)
        for first, last in ranges if bit else ():
            table[first:last + 1] |= bit
    for c in re.findall(f"[{WHITE_SPACE}]", "".join(map(chr, range(0x3001)))):
        table[ord(c)] |= 4
    return table.tobytes()
