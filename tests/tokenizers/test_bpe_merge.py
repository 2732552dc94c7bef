"""BPE merging (issue 24): a heap over linked symbols, so a long word costs O(n log n), and the same merges as
Hugging Face `tokenizers` in both the compiled model (_fast.BPECore) and its pure-Python twin."""

from __future__ import annotations

import time

import numpy as np
import pytest
from tokenizer_data import gpt2_files

from pytransformer.tokenizers import bpe, models
from pytransformer.tokenizers.byte_pairs import bytes_to_unicode


@pytest.fixture(params=["python", "compiled"])
def build(request, monkeypatch):
    """Models are built by the pure-Python loops or by the compiled ones (skipped when _fast is not built)."""
    if request.param == "compiled" and models._fast is None:
        pytest.skip("the Cython module is not built")
    if request.param == "python":
        monkeypatch.setattr(models, "_fast", None)
    return request.param


def hundred_thousand_letters():
    rng = np.random.default_rng(24)
    return ["a" * 100_000, "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 100_000))]


def test_a_100k_character_word_encodes_in_bounded_time_and_equals_the_reference(build):
    hf = pytest.importorskip("tokenizers")
    enc, merges = gpt2_files()
    ours = bpe.GPT2Tokenizer.from_files(enc, merges)
    assert (ours.model.core is None) == (build == "python")
    theirs = hf.ByteLevelBPETokenizer(enc, merges, add_prefix_space=False)
    for word in hundred_thousand_letters():
        t = time.perf_counter()
        ids = ours.encode(word)
        assert time.perf_counter() - t < 10.0  # was 26 s quadratic; ~0.3-0.7 s in Python on a 2-core machine
        assert ids == theirs.encode(word).ids


def tiny(ranks, **kw):
    """A BPE model over a..c, the merges' products and <0x..> byte tokens for 'é'."""
    vocab = {t: i for i, t in enumerate(["a", "b", "c", "aa", "aaa", "bc", "<unk>", "<0xC3>", "<0xA9>"])}
    return models.BPEModel(vocab, ranks, **kw)


def test_merge_takes_the_lowest_rank_then_the_leftmost_pair(build):
    m = tiny({("a", "a"): 0, ("aa", "a"): 1, ("b", "c"): 2})
    assert m.tokenize("aaa") == [4]
    assert m.tokenize("aaaa") == [3, 3]
    assert m.tokenize("abc") == [0, 5]
    assert m.tokenize("a") == [0] and m.tokenize("") == []


def test_unknown_characters_fall_back_to_bytes_or_fuse_into_unk(build):
    ranks = {("a", "a"): 0, ("b", "c"): 1}
    assert tiny(ranks, byte_fallback=True, unk_token="<unk>").tokenize("aéa") == [0, 7, 8, 0]
    assert tiny(ranks, unk_token="<unk>", fuse_unk=True).tokenize("aa€xbc") == [3, 6, 5]
    assert tiny(ranks, unk_token="<unk>").tokenize("aa€xbc") == [3, 6, 6, 5]
    assert tiny(ranks).tokenize("a€a") == [3]  # no unk: dropped, its neighbours merge


def test_byte_level_spells_the_bytes_in_gpt2s_alphabet(build):
    alphabet = bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(alphabet.values())}
    vocab["Ġa"] = len(vocab)
    m = models.BPEModel(vocab, {("Ġ", "a"): 0}, byte_level=True)
    assert m.tokenize(" a") == [vocab["Ġa"]]
    assert m.tokenize("é") == [vocab[alphabet[0xC3]], vocab[alphabet[0xA9]]]


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_implied_merges_of_a_sentencepiece_vocabulary_agree_compiled_and_in_python(arch, monkeypatch):
    """SentencePiece vocabularies rank their pairs by score (Gemma: by position), ties broken by the split's
    lengths: the compiled model ranks them on first sight, the Python twin through sentencepiece.ScoreRanks."""
    if models._fast is None:
        pytest.skip("the Cython module is not built")
    from pytransformer.tokenizers import sentencepiece

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [
        "\u2581", "a", "b", "c", "ab", "bc", "ca", "aa", "abc", "bca", "aaa", "\u2581a", "\u2581ab", "cab", "\u2581abc"]
    scores = [0.0] * 259 + [-1.0, -2.0, -2.0, -3.0, -1.5, -1.5, -2.5, -1.5, -1.0, -1.0, -0.5, -2.0, -1.0, -1.0, -0.1]
    metadata = {"general.architecture": arch, "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces,
                "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * 15,
                "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": False}
    tok = sentencepiece.from_gguf_metadata(metadata)
    assert tok.model.core is not None
    rng = np.random.default_rng(25)
    texts = ["".join(rng.choice(list("abc é"), rng.integers(0, 30))) for _ in range(300)] + ["abcabcaaab " * 20]
    compiled = [tok.encode(t) for t in texts]
    monkeypatch.setattr(tok.model, "core", None)
    monkeypatch.setattr(tok.model, "cache", {})
    assert [tok.encode(t) for t in texts] == compiled
