"""BPE merging (issue 24): a heap over linked symbols, so a long word costs O(n log n), and the same merges as
Hugging Face `tokenizers` in both the compiled loop and its pure-Python twin."""

from __future__ import annotations

import time

import numpy as np
import pytest
from tokenizer_data import gpt2_files

from pytransformer.tokenizers import bpe


def hundred_thousand_letters():
    rng = np.random.default_rng(24)
    return ["a" * 100_000, "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 100_000))]


@pytest.mark.parametrize("merge", ["python", "compiled"])
def test_a_100k_character_word_encodes_in_bounded_time_and_equals_the_reference(merge, monkeypatch):
    hf = pytest.importorskip("tokenizers")
    enc, merges = gpt2_files()
    if merge == "compiled" and bpe._bpe_merge_fast is None:
        pytest.skip("the Cython module is not built")
    if merge == "python":
        monkeypatch.setattr(bpe, "_bpe_merge_fast", None)
    ours = bpe.GPT2Tokenizer.from_files(enc, merges)
    theirs = hf.ByteLevelBPETokenizer(enc, merges, add_prefix_space=False)
    for word in hundred_thousand_letters():
        t = time.perf_counter()
        ids = ours.encode(word)
        assert time.perf_counter() - t < 10.0  # was 26 s quadratic; ~0.3-0.7 s now on a 2-core machine
        assert ids == theirs.encode(word).ids


def test_merge_takes_the_lowest_rank_then_the_leftmost_pair():
    ranks = {("a", "a"): 0, ("aa", "a"): 1, ("b", "c"): 2}
    for merge in filter(None, (bpe.bpe_merge, bpe._bpe_merge_fast)):
        assert merge(list("aaa"), ranks) == ["aaa"]
        assert merge(list("aaaa"), ranks) == ["aa", "aa"]
        assert merge(list("abc"), ranks) == ["a", "bc"]
        assert merge(["x"], ranks) == ["x"] and merge([], ranks) == []
