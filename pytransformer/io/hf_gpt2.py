"""Hugging Face GPT-2 (GPT2LMHeadModel / GPT2Model) <-> pytransformer's GPT.

The name map is one table of rules. GPT-2 stores its Linear weights as Conv1D, (in, out): they are
transposed, and the fused c_attn (C, 3C) holds our separate q, k and v projections side by side. lm_head is
tied to wte (not stored twice).
"""

from __future__ import annotations

from ..models.gpt import GPT, GPTConfig
from .hf_common import (MAX_LAYERS, TRANSPOSED, Fused, HFLayout, NameMap, check_activation, detect_prefix, divisible,
                        float_field, int_field, load, rule)

PREFIX = "transformer."


def from_hf(cfg: dict, tensors: dict):
    check_activation(cfg, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new")
    config = GPTConfig(vocab_size=int_field(cfg, "vocab_size"), max_positions=int_field(cfg, "n_positions"),
                       n_layer=int_field(cfg, "n_layer", hi=MAX_LAYERS), n_head=int_field(cfg, "n_head"),
                       n_embd=int_field(cfg, "n_embd"), dropout=0.0,
                       norm_eps=float_field(cfg, "layer_norm_epsilon", 0.0, 1.0, 1e-5))
    divisible(cfg, "n_embd", "n_head")
    return config, detect_prefix(tensors, PREFIX)


def names(c: GPTConfig, prefix: str = PREFIX) -> NameMap:
    p = prefix
    rules = [rule(f"{p}wte.weight", "wte.weight"), rule(f"{p}wpe.weight", "wpe.weight")]
    for i in range(c.n_layer):
        h, b = f"{p}h.{i}.", f"blocks.{i}."
        rules += [rule(f"{h}ln_1.weight", f"{b}attn.ln.weight"), rule(f"{h}ln_1.bias", f"{b}attn.ln.bias"),
                  rule(f"{h}ln_2.weight", f"{b}ffn.ln.weight"), rule(f"{h}ln_2.bias", f"{b}ffn.ln.bias"),
                  rule(f"{h}attn.c_attn.weight", *(f"{b}attn.sublayer.{n}.weight" for n in "qkv"),
                       layout=Fused(transposed=True)),
                  rule(f"{h}attn.c_attn.bias", *(f"{b}attn.sublayer.{n}.bias" for n in "qkv"),
                       layout=Fused(transposed=False))]
        for hf_name, ours in (("attn.c_proj", "attn.sublayer.o"), ("mlp.c_fc", "ffn.sublayer.fc1"),
                              ("mlp.c_proj", "ffn.sublayer.fc2")):
            rules += [rule(f"{h}{hf_name}.weight", f"{b}{ours}.weight", layout=TRANSPOSED),
                      rule(f"{h}{hf_name}.bias", f"{b}{ours}.bias")]
    rules += [rule(f"{p}ln_f.weight", "ln_f.weight"), rule(f"{p}ln_f.bias", "ln_f.bias")]
    return NameMap(rules, ignore=(".attn.bias", ".attn.masked_bias", "lm_head.weight"), strict=True)


def to_hf(c: GPTConfig):
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": c.vocab_size,
              "n_positions": c.max_positions, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
              "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps,
              "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": 0.0, "tie_word_embeddings": True,
              "scale_attn_weights": True}
    return config, PREFIX


LAYOUT = HFLayout("gpt2", ("GPT2LMHeadModel", "GPT2Model"), from_hf, names, to_hf)


def load_gpt2(path, mmap=True) -> GPT:
    """A GPT from a Hugging Face GPT-2 folder (config.json + model.safetensors or a sharded index)."""
    return load(LAYOUT, GPT, path, mmap)
