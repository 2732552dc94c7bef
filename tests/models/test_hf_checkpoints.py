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


@pytest.mark.parametrize("name", ["bert-mlm-tiny", "vit-tiny"])
def test_state_dict_uses_hf_names_and_save_pretrained_round_trips(tmp_path, name):
    from pytransformer.io import load_file

    model = from_pretrained(HF / name)
    stored = load_file(HF / name / "model.safetensors")
    sd = model.state_dict()
    assert set(sd) <= set(stored)
    for k, v in sd.items():
        np.testing.assert_array_equal(np.asarray(v).reshape(stored[k].shape), stored[k])
    model.save_pretrained(tmp_path)
    again = from_pretrained(tmp_path)
    np.testing.assert_array_equal(again.params.data, model.params.data)


def test_bert_loss_and_grad_dict_follow_transformers_conventions():
    ref = np.load(HF / "bert-mlm-tiny" / "ref.npz")
    model = from_pretrained(HF / "bert-mlm-tiny")
    ids, mask = ref["input_ids"], ref["attention_mask"]
    labels = np.where(mask.astype(bool), ids, -100)
    logits = model(ids, mask, ref["token_type_ids"])
    valid = labels != -100
    x = logits[valid].astype(np.float64)
    want = np.mean(np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1) - x[np.arange(len(x)), labels[valid]])
    model.zero_grad()
    assert abs(model.loss(ids, labels, mask, ref["token_type_ids"]) - want) < 1e-5 * want
    model.backward()
    grads = model.grad_dict()
    assert "bert.embeddings.word_embeddings.weight" in grads and np.abs(grads["cls.predictions.bias"]).sum() > 0


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path):
    import json
    import shutil

    from pytransformer.io import load_file, save_file

    shutil.copy(HF / "gpt2-tiny" / "config.json", tmp_path / "config.json")
    tensors = dict(load_file(HF / "gpt2-tiny" / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / shard)
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    ref = np.load(HF / "gpt2-tiny" / "ref.npz")
    assert rel(from_pretrained(tmp_path).forward(ref["input_ids"]), ref["logits"]) < 1e-4


def test_unknown_architecture_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "mamba"}')
    with pytest.raises(ValueError, match="unsupported model_type 'mamba'"):
        from_pretrained(tmp_path)
