"""tokenizer.json files of every kind, built here with the `tokenizers` package the way Llama 3, Qwen2, Llama 2,
Gemma, XLM-R and BERT build theirs: encode and decode equal transformers' AutoTokenizer (and `tokenizers`) on the
torture set, with and without special tokens."""

from __future__ import annotations

import json

import pytest
from tokenizer_data import TORTURE

import pytransformer.tokenizers as T

hf = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_TEXT = ["<|im_start|>user\nhi<|im_end|>\n", "a<|eot_id|>b <|begin_of_text|>", "<s>Hello</s> world",
                "[CLS] hello [MASK] there [SEP]", "<start_of_turn>model\nok<end_of_turn>", "<unk> <0x41> literal"]


def corpus():
    """Training text: the standard library's docstrings (fixed by the Python version) and some non-ASCII lines."""
    import collections  # noqa: E401
    import difflib
    import json as j
    import re
    import textwrap
    docs = [m.__doc__ or "" for m in (collections, difflib, j, re, textwrap)]
    extra = ["Héllo Wörld naïve café déjà vu", "日本語のテキスト 中文文本", "Ωμέγα и кириллица", "don't won't 12345 3.14"]
    return [line for d in docs for line in d.split("\n")] + extra * 20


def byte_level_bpe(split, specials, bos, normalizer=None, ignore_merges=True):
    tok = hf.Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=1500, special_tokens=specials,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def with_byte_fallback(tok, normalizer, pre, decoder):
    """A trained BPE given <0x00>..<0xFF> in its vocabulary and byte_fallback, as Llama 2's and Gemma's."""
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"].update(byte_fallback=True, fuse_unk=True, unk_token="<unk>")
    out = hf.Tokenizer.from_str(json.dumps(spec))
    out.normalizer, out.pre_tokenizer, out.decoder = normalizer, pre, decoder
    out.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", out.token_to_id("<s>"))])
    return out


def sentencepiece_bpe(kind):
    tok = hf.Tokenizer(models.BPE(unk_token="<unk>"))
    space = normalizers.Replace(" ", "\u2581")
    tok.normalizer = space if kind == "gemma" else normalizers.Sequence([normalizers.Prepend("\u2581"), space])
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=800, special_tokens=[
        "<unk>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>"]))
    sp_decoder = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if kind == "gemma":
        return with_byte_fallback(tok, space, pre_tokenizers.Split(" ", "merged_with_previous"),
                                  decoders.Sequence(sp_decoder))
    if kind == "llama2":
        return with_byte_fallback(tok, tok.normalizer, None,
                                  decoders.Sequence(sp_decoder + [decoders.Strip(" ", 1, 0)]))
    return with_byte_fallback(tok, None, pre_tokenizers.Metaspace(prepend_scheme="first", split=False),
                              decoders.Sequence(sp_decoder + [decoders.Strip(" ", 1, 0)]))


def unigram_xlmr():
    tok = hf.Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(corpus(), trainers.UnigramTrainer(vocab_size=600, unk_token="<unk>",
                                                              special_tokens=["<s>", "<pad>", "</s>", "<unk>",
                                                                              "<mask>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[
        ("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return tok


def wordpiece_bert(lowercase):
    tok = hf.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None if lowercase else False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=900, special_tokens=[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return tok


KINDS = {
    "llama3 byte-level BPE": lambda: byte_level_bpe(LLAMA3_SPLIT, ["<|begin_of_text|>", "<|eot_id|>"],
                                                    "<|begin_of_text|>"),
    "qwen2 byte-level BPE": lambda: byte_level_bpe(QWEN2_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                                   "<|im_start|>", normalizers.NFC(), ignore_merges=False),
    "llama2 byte-fallback BPE (Prepend+Replace)": lambda: sentencepiece_bpe("llama2"),
    "gemma byte-fallback BPE (Replace)": lambda: sentencepiece_bpe("gemma"),
    "byte-fallback BPE (Metaspace first)": lambda: sentencepiece_bpe("metaspace"),
    "xlm-r unigram": unigram_xlmr,
    "bert wordpiece uncased": lambda: wordpiece_bert(True),
    "bert wordpiece cased": lambda: wordpiece_bert(False),
}


@pytest.fixture(scope="module", params=list(KINDS))
def pair(request, tmp_path_factory):
    """(ours from the folder, AutoTokenizer of the same folder, the `tokenizers` object)."""
    theirs = KINDS[request.param]()
    folder = tmp_path_factory.mktemp("tok")
    theirs.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    auto = transformers.AutoTokenizer.from_pretrained(str(folder))
    return T.from_folder(folder), auto, theirs


@pytest.mark.parametrize("special", [False, True])
def test_encode_equals_autotokenizer_on_the_torture_set(pair, special):
    ours, auto, theirs = pair
    for text in TORTURE + SPECIAL_TEXT:
        want = auto.encode(text, add_special_tokens=special)
        assert ours.encode(text, add_special_tokens=special) == want, repr(text)
        assert want == theirs.encode(text, add_special_tokens=special).ids


@pytest.mark.parametrize("skip", [False, True])
def test_decode_equals_autotokenizer_on_the_torture_set(pair, skip):
    ours, auto, theirs = pair
    for text in TORTURE + SPECIAL_TEXT:
        ids = auto.encode(text)
        assert ours.decode(ids, skip_special_tokens=skip) == auto.decode(ids, skip_special_tokens=skip), repr(text)
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)


def test_encode_returns_a_list_of_int(pair):
    ids = pair[0].encode("hello world")
    assert type(ids) is list and all(type(i) is int for i in ids)


def test_a_100k_character_word_equals_tokenizers_in_bounded_time(pair):
    import time

    import numpy as np

    ours, _, theirs = pair
    word = "".join(np.random.default_rng(25).choice(list("abcdefghijklmnopqrstuvwxyz"), 100_000))
    t = time.perf_counter()
    ids = ours.encode(word)
    assert time.perf_counter() - t < 20.0  # O(n log n) merging; was quadratic (26 s for GPT-2 alone)
    assert ids == theirs.encode(word, add_special_tokens=False).ids


def test_streamed_text_joins_to_the_decoded_text(pair):
    ours, auto, _ = pair
    for text in TORTURE:
        ids = auto.encode(text, add_special_tokens=False)
        assert "".join(ours.stream_text(iter(ids))) == ours.decode(ids, skip_special_tokens=True), repr(text)


def test_the_compiled_model_equals_its_pure_python_twin(pair, monkeypatch):
    ours = pair[0]
    if ours.model.core is None:
        pytest.skip("the Cython module is not built")
    texts = TORTURE + SPECIAL_TEXT + ["x" * 2000]
    compiled = [ours.encode(t) for t in texts]
    monkeypatch.setattr(ours.model, "core", None)
    monkeypatch.setattr(ours.model, "cache", {})
    assert [ours.encode(t) for t in texts] == compiled


def test_a_lone_surrogate_is_a_value_error_naming_where_it_is(pair):
    ours = pair[0]
    with pytest.raises(ValueError, match=r"lone surrogate '\\ud800' at character 2"):
        ours.encode("ab\ud800c")
