"""Hugging Face MPNet (MPNetModel; MPNetForMaskedLM folders, as sentence-transformers keeps them, read for their
encoder) <-> pytransformer's MPNet: BERT's layer parts under MPNet's names, the shared relative-position bias table,
and positions after the padding index 1 as RoBERTa numbers them (hf_roberta.LaterRows)."""

from __future__ import annotations

from ..models.mpnet import MPNet, MPNetConfig
from .hf_common import (MAX_LAYERS, HFLayout, NameMap, check_activation, detect_prefix, divisible, encoder_layer_rules,
                        float_field, int_field, load, rule, weight_and_bias)
from .hf_roberta import LaterRows

PREFIX = "mpnet."
PAD = 1  # transformers' MPNetEmbeddings.padding_idx, whatever config.json says
ARCHITECTURES = ("MPNetModel", "MPNetForMaskedLM")
LAYER_PARTS = (("attention.attn.q", "attn.sublayer.q"), ("attention.attn.k", "attn.sublayer.k"),
               ("attention.attn.v", "attn.sublayer.v"), ("attention.attn.o", "attn.sublayer.o"),
               ("attention.LayerNorm", "attn.ln"), ("intermediate.dense", "ffn.sublayer.fc1"),
               ("output.dense", "ffn.sublayer.fc2"), ("output.LayerNorm", "ffn.ln"))


def from_hf(cfg: dict, tensors: dict):
    check_activation(cfg, "hidden_act", ("gelu",), "gelu")
    prefix = detect_prefix(tensors, PREFIX)
    config = MPNetConfig(vocab_size=int_field(cfg, "vocab_size"), n_embd=int_field(cfg, "hidden_size"),
                         n_layer=int_field(cfg, "num_hidden_layers", hi=MAX_LAYERS),
                         n_head=int_field(cfg, "num_attention_heads"),
                         intermediate_size=int_field(cfg, "intermediate_size"),
                         max_positions=int_field(cfg, "max_position_embeddings", PAD + 2) - PAD - 1,
                         norm_eps=float_field(cfg, "layer_norm_eps", 0.0, 1.0, 1e-5),
                         relative_buckets=int_field(cfg, "relative_attention_num_buckets", 32, default=32),
                         pooler=any(k.startswith(prefix + "pooler.") for k in tensors), pad_token_id=PAD)
    divisible(cfg, "hidden_size", "num_attention_heads")
    return config, prefix


def names(c: MPNetConfig, prefix: str = PREFIX) -> NameMap:
    p = prefix
    rules = [rule(f"{p}embeddings.word_embeddings.weight", "word.weight"),
             rule(f"{p}embeddings.position_embeddings.weight", "position.weight", layout=LaterRows(PAD + 1)),
             *weight_and_bias(f"{p}embeddings.LayerNorm", "emb_ln"),
             rule(f"{p}encoder.relative_attention_bias.weight", "relative_bias")]
    rules += encoder_layer_rules(p, c.n_layer, LAYER_PARTS)
    rules += weight_and_bias(f"{p}pooler.dense", "pooler")
    return NameMap(rules, ignore=("position_ids",))


def to_hf(c: MPNetConfig):
    return {"model_type": "mpnet", "architectures": ["MPNetModel"], "vocab_size": c.vocab_size,
            "hidden_size": c.n_embd, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
            "intermediate_size": c.intermediate_size, "max_position_embeddings": c.max_positions + PAD + 1,
            "layer_norm_eps": c.norm_eps, "hidden_act": "gelu", "relative_attention_num_buckets": c.relative_buckets,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "pad_token_id": PAD, "bos_token_id": 0,
            "eos_token_id": 2}, ""


LAYOUT = HFLayout("mpnet", ARCHITECTURES, from_hf, names, to_hf)


def load_mpnet(path, mmap=True) -> MPNet:
    """An MPNet from a Hugging Face folder, in eval mode."""
    return load(LAYOUT, MPNet, path, mmap)
