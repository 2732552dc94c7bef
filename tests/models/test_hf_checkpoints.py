"""BERT and ViT checkpoints written by transformers (../shared/data/hf) give transformers' own outputs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA

from pytransformer.io.hf import from_pretrained

HF = SHARED_DATA / "hf"
pytestmark = pytest.mark.skipif(not (HF / "bert-mlm-tiny").exists(), reason="shared data absent")


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_bert_mlm_tiny_matches_transformers():
    ref = np.load(HF / "bert-mlm-tiny" / "ref.npz")
    model = from_pretrained(HF / "bert-mlm-tiny")
    args = (ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
    mask = ref["attention_mask"].astype(bool)
    assert rel(model.mlm_logits(*args)[mask], ref["logits"][mask]) < 1e-4
    assert rel(model.encode(*args)[mask], ref["last_hidden_state"][mask]) < 1e-4


def test_vit_tiny_matches_transformers():
    ref = np.load(HF / "vit-tiny" / "ref.npz")
    model = from_pretrained(HF / "vit-tiny")
    assert rel(model.forward(ref["pixel_values"]), ref["logits"]) < 1e-4


def test_gpt2_tiny_through_from_pretrained():
    ref = np.load(HF / "gpt2-tiny" / "ref.npz")
    assert rel(from_pretrained(HF / "gpt2-tiny").forward(ref["input_ids"]), ref["logits"]) < 1e-4


def test_missing_tensors_are_listed(tmp_path):
    import shutil

    from pytransformer.io import load_file, save_file

    shutil.copy(HF / "vit-tiny" / "config.json", tmp_path / "config.json")
    tensors = dict(load_file(HF / "vit-tiny" / "model.safetensors"))
    del tensors["vit.layernorm.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['vit.layernorm.bias'\]"):
        from_pretrained(tmp_path)
