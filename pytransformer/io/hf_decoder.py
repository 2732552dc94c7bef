"""Hugging Face's llama-like decoders <-> DecoderConfig, written once: config.json's fields read and checked, the
name map and config.json back. Each family (Qwen2, Qwen3, Phi-3, Mistral) is an `HFDecoder`: its model_type and
architectures and how it differs from Llama, as data (q/k/v biases, q/k norms, fused q|k|v and gate|up, where its
sliding windows are)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..models.decoder import DecoderConfig
from ..nn.rope_scaling import frequencies, rope_type
from .hf_common import (MAX_HEAD_SIZE, MAX_LAYERS, SAME, Fused, HFLayout, NameMap, check_activation, decoder_names,
                        detect_prefix, float_field, int_field, rule)
from .safetensors import quote

PREFIX = "model."
ROPE_KEYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")  # what is not a scaling rule's own field
LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


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


def rope_fields(cfg: dict, max_positions: int, head_size: int) -> dict:
    """rope_theta, rope_scaling and partial_rotary_factor from rope_parameters (transformers 5) or rope_theta +
    rope_scaling (transformers 4), the scaling rule checked (nn.rope_scaling) before anything is built. Phi-3's "su"
    and "yarn" are its longrope, and its original_max_position_embeddings sits beside them (as transformers reads)."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ValueError(f"config.json: rope_parameters must be an object, got {quote(rope)}")
    theta = float_field({"rope_theta": cfg.get("rope_theta", rope.get("rope_theta", 10000.0))}, "rope_theta", 0.0,
                        1e12)
    partial = float_field({"partial_rotary_factor": rope.get("partial_rotary_factor",
                                                             cfg.get("partial_rotary_factor", 1.0))},
                          "partial_rotary_factor", 0.0, 1.0 + 1e-9)
    kind = rope_type(rope)
    if cfg.get("model_type") == "phi3" and kind in ("su", "yarn"):
        kind = "longrope"
    if kind == "default":
        return dict(rope_theta=theta, rope_scaling=None, partial_rotary_factor=partial)
    scaling = {"rope_type": kind, **{k: v for k, v in rope.items() if k not in ROPE_KEYS}}
    if "original_max_position_embeddings" in cfg and kind in ("llama3", "yarn", "longrope"):
        scaling["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
    try:
        frequencies(head_size, theta, scaling, max_positions)
    except ValueError as e:
        raise ValueError(f"config.json: rope_parameters: {e}") from None
    return dict(rope_theta=theta, rope_scaling=scaling, partial_rotary_factor=partial)


def size_fields(cfg: dict, head_dim_default=None) -> dict:
    """The sizes every llama-like config.json gives, checked: DecoderConfig's names. head_dim_default: the family's
    head_dim when config.json has none (None: hidden_size / num_attention_heads)."""
    n_head = int_field(cfg, "num_attention_heads")
    hidden = int_field(cfg, "hidden_size")
    head_dim = cfg.get("head_dim", head_dim_default)
    head_dim = None if head_dim is None else int_field({"head_dim": head_dim}, "head_dim", hi=MAX_HEAD_SIZE)
    head_dim = None if head_dim is not None and head_dim * n_head == hidden else head_dim
    if head_dim is None and hidden % n_head:
        raise ValueError(f"config.json: hidden_size {hidden} must be a multiple of num_attention_heads {n_head}")
    if head_dim is None and hidden // n_head > MAX_HEAD_SIZE:
        raise ValueError(f"config.json: hidden_size / num_attention_heads = {hidden // n_head} is past the "
                         f"{MAX_HEAD_SIZE} a head may have")
    n_kv = int_field(cfg, "num_key_value_heads", default=n_head)
    if n_head % n_kv:
        raise ValueError(f"config.json: num_key_value_heads {n_kv} must divide num_attention_heads {n_head}")
    head_size = head_dim or hidden // n_head
    if head_size % 2:
        raise ValueError(f"config.json: rotary attention needs an even head size, got {head_size}")
    max_positions = int_field(cfg, "max_position_embeddings", default=2048)
    return dict(vocab_size=int_field(cfg, "vocab_size"), n_layer=int_field(cfg, "num_hidden_layers", hi=MAX_LAYERS),
                n_embd=hidden, n_head=n_head, n_kv_head=n_kv, head_dim=head_dim,
                intermediate_size=int_field(cfg, "intermediate_size"), max_positions=max_positions,
                norm_eps=float_field(cfg, "rms_norm_eps", 0.0, 1.0, 1e-6),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                **rope_fields(cfg, max_positions, head_size))


def described(config) -> DecoderConfig:
    """The decoder description of a family's config (a DecoderConfig, or one with .decoder(): LlamaConfig)."""
    return config.decoder() if hasattr(config, "decoder") else config


@dataclass(frozen=True)
class HFDecoder:
    """How one llama-like family looks in transformers.

    qkv_bias:     q, k and v always have biases (Qwen2); else config.json's attention_bias says (refused if set)
    qk_norm:      q_norm and k_norm per head (Qwen3)
    fused:        qkv_proj and gate_up_proj (Phi-3)
    windows:      "none"; "all" (sliding_window on every layer when set: Mistral, Phi-3); "qwen" (use_sliding_window,
                  max_window_layers or layer_types: Qwen2, Qwen3)
    """
    model_type: str
    architectures: tuple
    qkv_bias: bool = False
    qk_norm: bool = False
    fused: bool = False
    windows: str = "none"
    head_dim: int | None = None  # head_dim when config.json has none (Qwen3's 128; None: hidden_size / heads)
    make_config: Callable | None = None  # DecoderConfig's fields -> the family's config (None: a DecoderConfig)

    def from_hf(self, cfg: dict, tensors: dict):
        check_activation(cfg, "hidden_act", ("silu",), "silu")
        for flag in ("mlp_bias",) + (() if self.qkv_bias else ("attention_bias",)):
            if cfg.get(flag):
                raise ValueError(f"config.json: {flag} is not supported")
        fields = size_fields(cfg, self.head_dim)
        fields.update(self._windows(cfg, fields["n_layer"]))
        try:
            config = self.make_config(fields) if self.make_config else \
                DecoderConfig(qkv_bias=self.qkv_bias, qk_norm=self.qk_norm, **fields)
        except ValueError as e:
            raise ValueError(f"config.json: {e}") from None
        gaps = described(config).unsupported()
        if gaps:  # (refused here, naming the file, before anything is allocated)
            raise ValueError(f"config.json: this decoder needs {', '.join(gaps)}, which pytransformer does not run yet")
        return config, detect_prefix(tensors, PREFIX)

    def _windows(self, cfg, n_layer) -> dict:
        window = cfg.get("sliding_window")
        if self.windows == "none" or window is None or self.windows == "qwen" and not cfg.get("use_sliding_window"):
            return {}
        window = int_field(cfg, "sliding_window")
        if self.windows == "all":
            return dict(sliding_window=window, layer_types=("sliding",) * n_layer)
        kinds = cfg.get("layer_types")
        if kinds is None:
            first = int_field(cfg, "max_window_layers", lo=0, hi=MAX_LAYERS, default=28)
            return dict(sliding_window=window, layer_types=tuple("sliding" if i >= first else "full"
                                                                 for i in range(n_layer)))
        if not isinstance(kinds, list) or len(kinds) != n_layer or any(k not in LAYER_TYPES for k in kinds):
            raise ValueError(f"config.json: layer_types must list {n_layer} of {', '.join(LAYER_TYPES)}, got "
                             f"{quote(kinds)}")
        return dict(sliding_window=window, layer_types=tuple(LAYER_TYPES[k] for k in kinds))

    def names(self, config, prefix: str = PREFIX) -> NameMap:
        d = described(config)

        def layer(h, b):
            rules = [rule(f"{h}input_layernorm.weight", f"{b}attn.ln.weight"),
                     rule(f"{h}post_attention_layernorm.weight", f"{b}ffn.ln.weight"),
                     rule(f"{h}self_attn.o_proj.weight", f"{b}attn.sublayer.o.weight"),
                     rule(f"{h}mlp.down_proj.weight", f"{b}ffn.sublayer.down.weight")]
            if d.qk_norm:
                rules += [rule(f"{h}self_attn.{n}_norm.weight", f"{b}attn.sublayer.{n}_norm.weight") for n in "qk"]
            if self.fused:
                return rules + [rule(f"{h}self_attn.qkv_proj.weight", *(f"{b}attn.sublayer.{n}.weight" for n in "qkv"),
                                     layout=Fused(False)),
                                rule(f"{h}mlp.gate_up_proj.weight", f"{b}ffn.sublayer.gate.weight",
                                     f"{b}ffn.sublayer.up.weight", layout=Fused(False))]
            for n, heads in (("q", d.n_head), ("k", d.n_kv_head_), ("v", None)):
                layout = Interleaved(heads) if heads and d.rope_interleaved else SAME
                rules.append(rule(f"{h}self_attn.{n}_proj.weight", f"{b}attn.sublayer.{n}.weight", layout=layout))
                if d.qkv_bias:
                    rules.append(rule(f"{h}self_attn.{n}_proj.bias", f"{b}attn.sublayer.{n}.bias", layout=layout))
            return rules + [rule(f"{h}mlp.{n}_proj.weight", f"{b}ffn.sublayer.{n}.weight") for n in ("gate", "up")]

        return decoder_names(d, prefix, layer)

    def to_hf(self, config):
        d = described(config)
        rope = {"rope_type": "default", "rope_theta": d.rope_theta, **(d.rope_scaling or {})}
        config = {"model_type": self.model_type, "architectures": [self.architectures[0]],
                  "vocab_size": d.vocab_size, "hidden_size": d.n_embd, "intermediate_size": d.ffn_size,
                  "num_hidden_layers": d.n_layer, "num_attention_heads": d.n_head, "num_key_value_heads": d.n_kv_head_,
                  "head_dim": d.head_size, "max_position_embeddings": d.max_positions, "rms_norm_eps": d.norm_eps,
                  "rope_theta": d.rope_theta, "rope_parameters": rope, "tie_word_embeddings": d.tie_word_embeddings,
                  "hidden_act": "silu", "sliding_window": d.sliding_window,
                  "pad_token_id": None}  # (ours trains every row; Phi-3's default 32000 may be past a vocabulary)
        if not self.qkv_bias:
            config["attention_bias"] = False
        if self.windows == "qwen":
            config.update(use_sliding_window=d.sliding_window is not None,
                          layer_types=[f"{t}_attention" for t in (d.layer_types or ("full",) * d.n_layer)])
        if "original_max_position_embeddings" in rope and self.model_type == "phi3":
            config["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
        return config, PREFIX

    def layout(self) -> HFLayout:
        return HFLayout(self.model_type, self.architectures, self.from_hf, self.names, self.to_hf)


QWEN2 = HFDecoder("qwen2", ("Qwen2ForCausalLM", "Qwen2Model"), qkv_bias=True, windows="qwen")
QWEN3 = HFDecoder("qwen3", ("Qwen3ForCausalLM", "Qwen3Model"), qk_norm=True, windows="qwen", head_dim=128)
PHI3 = HFDecoder("phi3", ("Phi3ForCausalLM", "Phi3Model"), fused=True, windows="all")
MISTRAL = HFDecoder("mistral", ("MistralForCausalLM", "MistralModel"), windows="all")
