"""Text corpora for the command line. The default needs no download: the source code of Python's own
standard library, which every CPython installation carries (about a megabyte of real, structured text)."""

from __future__ import annotations

import os
import sysconfig


def stdlib_corpus(max_chars: int = 1_000_000) -> str:
    """The first max_chars characters of the standard library's top-level .py files, in sorted order."""
    root = sysconfig.get_paths()["stdlib"]
    parts, total = [], 0
    for name in sorted(os.listdir(root)):
        if not name.endswith(".py"):
            continue
        try:
            with open(os.path.join(root, name), encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not parts:
        raise RuntimeError(f"no Python sources found under {root}; pass --data FILE")
    return "".join(parts)[:max_chars]


def read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if len(text) < 1000:
        raise ValueError(f"{path}: {len(text)} characters is too little text to train on")
    return text
