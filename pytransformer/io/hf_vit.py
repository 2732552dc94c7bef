"""Hugging Face ViT (ViTModel / ViTForImageClassification) <-> pytransformer's ViT. One table of rules; the
patch projection is a stride-p convolution there (C, channels, p, p) and a Linear here (C, channels * p * p)."""

from __future__ import annotations

from ..models.vit import ViT, ViTConfig
from .hf_common import (MAX_LAYERS, HFLayout, NameMap, Same, check_activation, detect_prefix, divisible, float_field,
                        encoder_layer_rules, int_field, label_count, labels, load, rule, weight_and_bias)

PREFIX = "vit."

LAYER_PARTS = (("layernorm_before", "attn.ln"), ("attention.attention.query", "attn.sublayer.q"),
               ("attention.attention.key", "attn.sublayer.k"), ("attention.attention.value", "attn.sublayer.v"),
               ("attention.output.dense", "attn.sublayer.o"), ("layernorm_after", "ffn.ln"),
               ("intermediate.dense", "ffn.sublayer.fc1"), ("output.dense", "ffn.sublayer.fc2"))


def from_hf(cfg: dict, tensors: dict):
    check_activation(cfg, "hidden_act", ("gelu",), "gelu")
    has_head = "classifier.weight" in tensors
    config = ViTConfig(image_size=int_field(cfg, "image_size"), patch_size=int_field(cfg, "patch_size"),
                       num_channels=int_field(cfg, "num_channels", default=3),
                       n_embd=int_field(cfg, "hidden_size"),
                       n_layer=int_field(cfg, "num_hidden_layers", hi=MAX_LAYERS),
                       n_head=int_field(cfg, "num_attention_heads"),
                       intermediate_size=int_field(cfg, "intermediate_size"),
                       norm_eps=float_field(cfg, "layer_norm_eps", 0.0, 1.0, 1e-12),
                       num_labels=label_count(cfg) if has_head else 0)
    divisible(cfg, "hidden_size", "num_attention_heads")
    divisible(cfg, "image_size", "patch_size")
    return config, detect_prefix(tensors, PREFIX)


def names(c: ViTConfig, prefix: str = PREFIX) -> NameMap:
    p, C, patch = prefix, c.n_embd, c.patch_size
    n_patches = (c.image_size // patch) ** 2
    rules = [rule(f"{p}embeddings.cls_token", "patch.cls_token"),
             rule(f"{p}embeddings.patch_embeddings.projection.weight", "patch.proj.weight",
                  layout=Same((C, c.num_channels, patch, patch))),
             rule(f"{p}embeddings.patch_embeddings.projection.bias", "patch.proj.bias"),
             rule(f"{p}embeddings.position_embeddings", "pos.weight", layout=Same((1, n_patches + 1, C)))]
    rules += encoder_layer_rules(p, c.n_layer, LAYER_PARTS)
    rules += [*weight_and_bias(f"{p}layernorm", "ln"), *weight_and_bias("classifier", "classifier")]
    return NameMap(rules, ignore=("pooler.dense.weight", "pooler.dense.bias"))


def to_hf(c: ViTConfig):
    head = c.num_labels > 0
    config = {"model_type": "vit", "architectures": ["ViTForImageClassification" if head else "ViTModel"],
              "image_size": c.image_size, "patch_size": c.patch_size, "num_channels": c.num_channels,
              "hidden_size": c.n_embd, "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "intermediate_size": c.intermediate_size,
              "layer_norm_eps": c.norm_eps, "hidden_act": "gelu", "hidden_dropout_prob": c.dropout,
              "attention_probs_dropout_prob": 0.0, "qkv_bias": True, **labels(c.num_labels)}
    return config, PREFIX if head else ""


LAYOUT = HFLayout("vit", ("ViTModel", "ViTForImageClassification"), from_hf, names, to_hf)


def load_vit(path, mmap=True) -> ViT:
    return load(LAYOUT, ViT, path, mmap)
