"""Hugging Face Gemma 3 text models (model_type "gemma3_text": Gemma3ForCausalLM / Gemma3TextModel) <->
pytransformer's Gemma3 (a DecoderConfig with Gemma 3's parts). Linear weights are (out, in) in both; the four norms
of a layer are our blocks' sandwich norms; the name map is one table of rules."""

from __future__ import annotations

from ..models.decoder import DecoderConfig
from ..models.gemma3 import Gemma3, gemma3_config
from .hf_common import (MAX_HEAD_SIZE, MAX_LAYERS, HFLayout, NameMap, check_activation, decoder_names, detect_prefix,
                        float_field, int_field, load, rule)
from .safetensors import quote

PREFIX = "model."
LAYER_TYPES = {"sliding_attention": "sliding", "full_attention": "full"}  # transformers' name -> ours
DEFAULT_THETA = {"full_attention": 1_000_000.0, "sliding_attention": 10_000.0}  # Gemma3TextConfig.default_theta


def _rope(cfg: dict) -> dict:
    """Each layer type's rotary settings: rope_parameters (transformers 5), or rope_theta, rope_local_base_freq and
    rope_scaling (transformers 4, the full layers' scaling)."""
    rope = cfg.get("rope_parameters")
    if rope is None:
        full = {"rope_type": "default", **(cfg.get("rope_scaling") or {})}
        full.setdefault("rope_theta", cfg.get("rope_theta", DEFAULT_THETA["full_attention"]))
        rope = {"full_attention": full, "sliding_attention": {
            "rope_type": "default", "rope_theta": cfg.get("rope_local_base_freq", DEFAULT_THETA["sliding_attention"])}}
    if not isinstance(rope, dict) or not all(isinstance(rope.get(t, {}), dict) for t in LAYER_TYPES):
        raise ValueError(f"config.json: rope_parameters {quote(rope)} must hold a dict per layer type")
    out = {}
    for t in LAYER_TYPES:
        p = rope.get(t) or {}
        theta = float_field({"rope_theta": p.get("rope_theta", DEFAULT_THETA[t])}, "rope_theta", 0.0, 1e12)
        out[t] = (theta, {k: v for k, v in p.items() if k != "rope_theta"})
    if out["sliding_attention"][1].get("rope_type", "default") != "default":
        raise ValueError(f"config.json: the sliding layers' rope scaling {quote(out['sliding_attention'][1])} is not "
                         f"supported")
    return out


def from_hf(cfg: dict, tensors: dict):
    check_activation(cfg, "hidden_activation", ("gelu_pytorch_tanh",), "gelu_pytorch_tanh")
    for flag in ("attention_bias", "use_bidirectional_attention", "attn_logit_softcapping"):
        if cfg.get(flag):
            raise ValueError(f"config.json: {flag} {quote(cfg[flag])} is not supported")
    n_layer = int_field(cfg, "num_hidden_layers", hi=MAX_LAYERS)
    n_head = int_field(cfg, "num_attention_heads")
    n_kv = int_field(cfg, "num_key_value_heads", default=n_head)
    if n_head % n_kv:
        raise ValueError(f"config.json: num_key_value_heads {n_kv} must divide num_attention_heads {n_head}")
    layer_types = cfg.get("layer_types")
    if layer_types is None:  # (older configs: every sliding_window_pattern-th layer full)
        pattern = int_field(cfg, "sliding_window_pattern", default=6)
        layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layer)]
    if not isinstance(layer_types, list) or len(layer_types) != n_layer or not set(layer_types) <= set(LAYER_TYPES):
        raise ValueError(f"config.json: layer_types must list {n_layer} of {', '.join(LAYER_TYPES)}, got "
                         f"{quote(layer_types)}")
    window = None if cfg.get("sliding_window") is None else int_field(cfg, "sliding_window")
    cap = cfg.get("final_logit_softcapping")
    rope = _rope(cfg)
    scaling = rope["full_attention"][1]
    fields = dict(vocab_size=int_field(cfg, "vocab_size"), n_layer=n_layer, n_embd=int_field(cfg, "hidden_size"),
                  n_head=n_head, n_kv_head=n_kv, head_dim=int_field(cfg, "head_dim", hi=MAX_HEAD_SIZE, default=256),
                  intermediate_size=int_field(cfg, "intermediate_size"),
                  max_positions=int_field(cfg, "max_position_embeddings", default=131072),
                  norm_eps=float_field(cfg, "rms_norm_eps", 0.0, 1.0, 1e-6),
                  rope_theta=rope["full_attention"][0], rope_local_theta=rope["sliding_attention"][0],
                  rope_scaling=None if scaling.get("rope_type", "default") == "default" else scaling,
                  sliding_window=window, layer_types=tuple(LAYER_TYPES[t] for t in layer_types),
                  query_pre_attn_scalar=float_field(cfg, "query_pre_attn_scalar", 0.0, 1e12, 256.0),
                  final_logit_softcapping=None if cap is None else float_field(cfg, "final_logit_softcapping", 0.0,
                                                                              1e12),
                  tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)))
    try:
        config = gemma3_config(**fields)
    except (ValueError, NotImplementedError) as e:
        raise ValueError(f"config.json: {e}") from None
    return config, detect_prefix(tensors, PREFIX)


def names(c: DecoderConfig, prefix: str = PREFIX) -> NameMap:
    def layer(h, b):
        rules = [rule(f"{h}{hf}.weight", f"{b}{ours}.weight")
                 for hf, ours in (("input_layernorm", "attn.ln"), ("post_attention_layernorm", "attn.post_ln"),
                                  ("pre_feedforward_layernorm", "ffn.ln"), ("post_feedforward_layernorm", "ffn.post_ln"),
                                  ("self_attn.q_norm", "attn.sublayer.q_norm"),
                                  ("self_attn.k_norm", "attn.sublayer.k_norm"))]
        rules += [rule(f"{h}self_attn.{n}_proj.weight", f"{b}attn.sublayer.{n}.weight") for n in "qkvo"]
        return rules + [rule(f"{h}mlp.{n}_proj.weight", f"{b}ffn.sublayer.{n}.weight") for n in ("gate", "up", "down")]
    return decoder_names(c, prefix, layer)


def _whole(x):
    """A number transformers types as int (query_pre_attn_scalar), written as one when it is whole."""
    return int(x) if float(x).is_integer() else x


def to_hf(c: DecoderConfig):
    ours_to_hf = {v: k for k, v in LAYER_TYPES.items()}
    full = {"rope_type": "default", **(c.rope_scaling or {}), "rope_theta": c.rope_theta}
    config = {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "vocab_size": c.vocab_size,
              "hidden_size": c.n_embd, "intermediate_size": c.ffn_size, "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head_, "head_dim": c.head_size,
              "max_position_embeddings": c.max_positions, "rms_norm_eps": c.norm_eps,
              "rope_parameters": {"full_attention": full, "sliding_attention": {
                  "rope_type": "default",
                  "rope_theta": c.rope_theta if c.rope_local_theta is None else c.rope_local_theta}},
              "layer_types": [ours_to_hf[c.layer_type(i)] for i in range(c.n_layer)],
              "sliding_window": c.sliding_window, "query_pre_attn_scalar": _whole(c.query_pre_attn_scalar or c.head_size),
              "final_logit_softcapping": c.final_logit_softcapping, "attn_logit_softcapping": None,
              "tie_word_embeddings": c.tie_word_embeddings, "hidden_activation": "gelu_pytorch_tanh",
              "attention_bias": False}
    return config, PREFIX


LAYOUT = HFLayout("gemma3_text", ("Gemma3ForCausalLM", "Gemma3TextModel"), from_hf, names, to_hf)


def load_gemma3(path, mmap=True) -> Gemma3:
    return load(LAYOUT, Gemma3, path, mmap)
