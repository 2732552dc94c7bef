"""Hugging Face Llama (LlamaForCausalLM / LlamaModel: SmolLM2, TinyLlama, Llama 2/3 without rope scaling) <->
pytransformer's Llama. Linear weights are (out, in) in both; the name map is one table of rules."""

from __future__ import annotations

from ..models.llama import Llama, LlamaConfig
import numpy as np

from .hf_common import (MAX_HEAD_SIZE, MAX_LAYERS, SAME, HFLayout, NameMap, check_activation, detect_prefix, float_field,
                        int_field, load, rule)
from .safetensors import quote


class Interleaved:
    """A q or k projection whose rows we keep in llama.cpp's order (a model loaded from GGUF: rotary pairs
    (2i, 2i + 1)); Hugging Face's order pairs rows i and i + HS/2 of each head (convert_hf_to_gguf's permute)."""

    def __init__(self, n_head: int):
        self.n_head = n_head

    def hf_shape_of(self, shapes):
        return tuple(shapes[0])

    def to_ours(self, value, shapes):
        w = np.asarray(value).reshape(shapes[0])
        return [np.ascontiguousarray(w.reshape(self.n_head, 2, w.shape[0] // self.n_head // 2, -1)
                                     .swapaxes(1, 2).reshape(w.shape))]

    def to_hf(self, values):
        w = np.asarray(values[0])
        return np.ascontiguousarray(w.reshape(self.n_head, w.shape[0] // self.n_head // 2, 2, -1)
                                    .swapaxes(1, 2).reshape(w.shape))

PREFIX = "model."


def from_hf(cfg: dict, tensors: dict):
    check_activation(cfg, "hidden_act", ("silu",), "silu")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ValueError(f"config.json: {flag} is not supported")
    # rotary settings: rope_theta and rope_scaling (transformers 4), or rope_parameters (transformers 5)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"config.json: rope scaling {quote(rope)} is not supported (plain rotary only)")
    if "rope_theta" not in cfg and "rope_theta" in rope:
        cfg = {**cfg, "rope_theta": rope["rope_theta"]}
    n_head = int_field(cfg, "num_attention_heads")
    hidden = int_field(cfg, "hidden_size")
    head_dim = None if cfg.get("head_dim") is None else int_field(cfg, "head_dim", hi=MAX_HEAD_SIZE)
    head_dim = None if head_dim is not None and head_dim * n_head == hidden else head_dim
    if head_dim is None and hidden % n_head:
        raise ValueError(f"config.json: hidden_size {hidden} must be a multiple of num_attention_heads {n_head}")
    if head_dim is None and hidden // n_head > MAX_HEAD_SIZE:
        raise ValueError(f"config.json: hidden_size / num_attention_heads = {hidden // n_head} is past the "
                         f"{MAX_HEAD_SIZE} a head may have")
    n_kv = int_field(cfg, "num_key_value_heads", default=n_head)
    if n_head % n_kv:
        raise ValueError(f"config.json: num_key_value_heads {n_kv} must divide num_attention_heads {n_head}")
    fields = dict(vocab_size=int_field(cfg, "vocab_size"), n_layer=int_field(cfg, "num_hidden_layers", hi=MAX_LAYERS),
                  n_embd=hidden, n_head=n_head, n_kv_head=n_kv, intermediate_size=int_field(cfg, "intermediate_size"),
                  max_positions=int_field(cfg, "max_position_embeddings", default=2048),
                  norm_eps=float_field(cfg, "rms_norm_eps", 0.0, 1.0, 1e-6),
                  rope_theta=float_field(cfg, "rope_theta", 0.0, 1e12, 10000.0),
                  tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), head_dim=head_dim)
    try:
        config = LlamaConfig(**fields)
    except ValueError as e:
        raise ValueError(f"config.json: {e}") from None
    return config, detect_prefix(tensors, PREFIX)


def names(c: LlamaConfig, prefix: str = PREFIX) -> NameMap:
    p = prefix
    rules = [rule(f"{p}embed_tokens.weight", "embed.weight"), rule(f"{p}norm.weight", "norm.weight")]
    for i in range(c.n_layer):
        h, b = f"{p}layers.{i}.", f"blocks.{i}."
        rules += [rule(f"{h}input_layernorm.weight", f"{b}attn.ln.weight"),
                  rule(f"{h}post_attention_layernorm.weight", f"{b}ffn.ln.weight")]
        for n, heads in (("q", c.n_head), ("k", c.n_kv_head), ("v", None), ("o", None)):
            layout = Interleaved(heads) if heads and c.rope_interleaved else SAME
            rules.append(rule(f"{h}self_attn.{n}_proj.weight", f"{b}attn.sublayer.{n}.weight", layout=layout))
        rules += [rule(f"{h}mlp.{n}_proj.weight", f"{b}ffn.sublayer.{n}.weight") for n in ("gate", "up", "down")]
    if not c.tie_word_embeddings:
        rules.append(rule("lm_head.weight", "lm_head.weight"))
    return NameMap(rules, ignore=(".rotary_emb.inv_freq",) + (("lm_head.weight",) if c.tie_word_embeddings else ()),
                   strict=True)


def to_hf(c: LlamaConfig):
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": c.vocab_size,
              "hidden_size": c.n_embd, "intermediate_size": c.intermediate_size, "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.head_size,
              "max_position_embeddings": c.max_positions, "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
              "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
              "tie_word_embeddings": c.tie_word_embeddings, "hidden_act": "silu", "attention_bias": False,
              "mlp_bias": False}
    return config, PREFIX


LAYOUT = HFLayout("llama", ("LlamaForCausalLM", "LlamaModel"), from_hf, names, to_hf)


def load_llama(path, mmap=True) -> Llama:
    return load(LAYOUT, Llama, path, mmap)
