"""The family configs share one vocabulary (DecoderConfig's names) and one base: dicts that earlier versions wrote
(Hugging Face-style and per-family names) still load, sizes are checked, parameters are counted without a model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pytransformer.checkpoint import load_checkpoint, save_checkpoint
from pytransformer.io.safetensors import load_file, read_metadata, save_file
from pytransformer.models import (BERT, GPT, BertConfig, GPTConfig, Llama, LlamaConfig, Transformer, TransformerConfig,
                                  ViT, ViTConfig)

# config dicts exactly as the previous version's to_dict() wrote them, and the config each is now
OLD_DICTS = [
    ({"vocab_size": 37, "block_size": 24, "n_layer": 2, "n_head": 3, "n_embd": 24, "dropout": 0.1, "bias": True,
      "layer_norm_eps": 1e-5, "head_dim": None},
     GPTConfig(vocab_size=37, max_positions=24, n_layer=2, n_head=3, n_embd=24, dropout=0.1, norm_eps=1e-5)),
    ({"vocab_size": 50, "n_layer": 2, "n_embd": 32, "n_head": 4, "n_kv_head": 2, "intermediate_size": 40,
      "max_positions": 64, "rms_norm_eps": 1e-6, "rope_theta": 500.0, "tie_word_embeddings": False, "head_dim": None,
      "rope_interleaved": False},
     LlamaConfig(vocab_size=50, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=40, max_positions=64,
                 norm_eps=1e-6, rope_theta=500.0, tie_word_embeddings=False)),
    ({"vocab_size": 41, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 40,
      "max_position_embeddings": 20, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.0,
      "hidden_act": "gelu_exact", "num_labels": 3, "num_token_labels": 0, "mlm": True, "pooler": True, "nsp": False,
      "pad_token_id": 0},
     BertConfig(vocab_size=41, n_embd=24, n_layer=2, n_head=3, intermediate_size=40, max_positions=20, dropout=0.0,
                num_labels=3)),
    ({"image_size": 8, "patch_size": 4, "num_channels": 3, "hidden_size": 24, "num_hidden_layers": 2,
      "num_attention_heads": 3, "intermediate_size": 40, "layer_norm_eps": 1e-6, "num_labels": 5, "dropout": 0.0},
     ViTConfig(image_size=8, patch_size=4, n_embd=24, n_layer=2, n_head=3, intermediate_size=40, norm_eps=1e-6,
               num_labels=5)),
    ({"src_vocab_size": 23, "tgt_vocab_size": 19, "d_model": 24, "n_head": 4, "n_encoder_layers": 2,
      "n_decoder_layers": 1, "d_ff": 40, "dropout": 0.0, "max_len": 32, "share_embeddings": False,
      "layer_norm_eps": 1e-5, "label_smoothing": 0.1},
     TransformerConfig(23, 19, n_embd=24, n_head=4, n_encoder_layer=2, n_decoder_layer=1, intermediate_size=40,
                       dropout=0.0, max_positions=32, label_smoothing=0.1)),
]
MODELS = {GPTConfig: GPT, LlamaConfig: Llama, BertConfig: BERT, ViTConfig: ViT, TransformerConfig: Transformer}


@pytest.mark.parametrize("old,new", OLD_DICTS, ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "")
def test_a_dict_with_the_old_names_reads_as_the_new_config(old, new):
    assert type(new).from_dict(old) == new
    assert type(new).from_dict(new.to_dict()) == new


@pytest.mark.parametrize("old,new", OLD_DICTS, ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "")
def test_a_checkpoint_written_with_the_old_names_loads(tmp_path, old, new):
    path = tmp_path / "old.safetensors"
    model = MODELS[type(new)](new, seed=4)
    save_checkpoint(path, model)
    meta = read_metadata(path)
    save_file(load_file(path), path, {**meta, "config": json.dumps(old)})  # as the previous version wrote it
    loaded = load_checkpoint(path)["model"]
    assert loaded.config == new
    loaded_params = loaded.params_dict()
    assert all((loaded_params[name] == value).all() for name, value in model.params_dict().items())


def test_an_unknown_field_is_named():
    with pytest.raises(ValueError, match="GPTConfig has no field n_layers"):
        GPTConfig.from_dict({"n_layers": 2})


@pytest.mark.parametrize("config,field", [(GPTConfig(), "n_embd"), (GPTConfig(), "max_positions"),
                                          (LlamaConfig(), "n_head"), (LlamaConfig(), "intermediate_size"),
                                          (BertConfig(), "type_vocab_size"), (ViTConfig(), "patch_size"),
                                          (TransformerConfig(5, 5), "n_decoder_layer")],
                         ids=lambda v: v if isinstance(v, str) else type(v).__name__)
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_sizes_must_be_positive_integers(config, field, value):
    name = type(config).__name__
    with pytest.raises(ValueError, match=f"{name}.{field} must be a positive integer, got {value!r}"):
        replace(config, **{field: value})


def test_presets_are_named_and_overridden():
    assert BertConfig.preset("bert-tiny", n_layer=1) == BertConfig(n_embd=128, n_layer=1, n_head=2,
                                                                   intermediate_size=512)
    with pytest.raises(ValueError, match="unknown BertConfig preset 'bert-huge'; choose from bert-base, bert-large"):
        BertConfig.preset("bert-huge")


@pytest.mark.parametrize("config", [new for _, new in OLD_DICTS], ids=lambda c: type(c).__name__)
def test_num_params_counts_the_model_without_building_it(config):
    assert config.num_params() == MODELS[type(config)](config).num_parameters()
