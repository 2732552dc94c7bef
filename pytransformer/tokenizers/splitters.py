"""The pre-tokenizer splits every byte-level BPE and BERT vocabulary runs, compiled: GPT-2's regex, Llama 3's and
Qwen2's Split regexes (each matches every character, so its matches are the pieces) and BERT's whitespace +
punctuation split, spelled out by hand in _fast.Splitter. The regexes here are the spec (and the path when the
compiled module is not built); the tests hold the Splitter to them."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from .unicode_regex import WHITE_SPACE, category_class, class_table, compile_pattern

try:
    from . import _fast
except ImportError:
    _fast = None

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
COMPILED = {GPT2: "gpt2", LLAMA3: "llama3", QWEN2: "qwen2"}  # pattern -> its Splitter


def is_punctuation(c):
    """BERT's punctuation: ASCII punctuation or any Unicode P* character."""
    return (c.isascii() and not c.isalnum() and c.isprintable() and c != " ") or unicodedata.category(c)[0] == "P"


@lru_cache(maxsize=None)
def bert_regex() -> re.Pattern:
    """BERT's pre-tokenizer as one regex: the runs of neither whitespace nor punctuation, and each punctuation
    character (whitespace removed)."""
    punct = re.escape("".join(c for c in map(chr, range(128)) if is_punctuation(c))) + category_class("P")
    return re.compile(f"[^{WHITE_SPACE}{punct}]+|[{punct}]")


@lru_cache(maxsize=None)
def findall(pattern: str):
    """text -> the matches of pattern (an Oniguruma pattern; "bert": BERT's split), compiled when _fast knows it."""
    if _fast is not None and (pattern in COMPILED or pattern == "bert"):
        return _fast.Splitter(COMPILED.get(pattern, "bert"), class_table()).split
    return bert_regex().findall if pattern == "bert" else compile_pattern(pattern).findall
