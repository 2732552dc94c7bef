"""Hugging Face GPT-2 checkpoints (GPT2LMHeadModel / GPT2Model) <-> pytransformer's GPT.

The name map is an explicit table. GPT-2 stores its Linear weights as Conv1D, (in, out): they are transposed,
and the fused c_attn (C, 3C) is split into our separate q, k and v projections. lm_head is tied to wte.
"""

from __future__ import annotations

import numpy as np

from ..models.gpt import GPT, GPTConfig


def config_from_hf(cfg: dict) -> GPTConfig:
    act = cfg.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-2 activation {act!r} is not supported (expected gelu_new)")
    return GPTConfig(vocab_size=cfg["vocab_size"], block_size=cfg["n_positions"], n_layer=cfg["n_layer"],
                     n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0,
                     layer_norm_eps=cfg.get("layer_norm_epsilon", 1e-5))


def hf_to_ours(hf: dict, n_layer: int, prefix: str = "transformer.") -> dict:
    """HF tensors (Conv1D layout) -> {our name: array}. Raises ValueError listing what is missing."""
    C = hf[prefix + "wte.weight"].shape[1] if prefix + "wte.weight" in hf else None
    out, missing = {}, []

    def take(name):
        if name not in hf:
            missing.append(name)
            return None
        return np.asarray(hf[name], np.float32)

    out["wte.weight"] = take(prefix + "wte.weight")
    out["wpe.weight"] = take(prefix + "wpe.weight")
    for i in range(n_layer):
        h, b = f"{prefix}h.{i}.", f"blocks.{i}."
        for ln_hf, ln_ours in (("ln_1", "attn.ln"), ("ln_2", "ffn.ln")):
            out[f"{b}{ln_ours}.weight"] = take(f"{h}{ln_hf}.weight")
            out[f"{b}{ln_ours}.bias"] = take(f"{h}{ln_hf}.bias")
        w, bias = take(f"{h}attn.c_attn.weight"), take(f"{h}attn.c_attn.bias")
        if w is not None and bias is not None:
            for j, name in enumerate("qkv"):
                out[f"{b}attn.sublayer.{name}.weight"] = np.ascontiguousarray(w[:, j * C:(j + 1) * C].T)
                out[f"{b}attn.sublayer.{name}.bias"] = bias[j * C:(j + 1) * C]
        for hf_name, ours in (("attn.c_proj", "attn.sublayer.o"), ("mlp.c_fc", "ffn.sublayer.fc1"),
                              ("mlp.c_proj", "ffn.sublayer.fc2")):
            w = take(f"{h}{hf_name}.weight")
            out[f"{b}{ours}.weight"] = None if w is None else np.ascontiguousarray(w.T)
            out[f"{b}{ours}.bias"] = take(f"{h}{hf_name}.bias")
    out["ln_f.weight"] = take(prefix + "ln_f.weight")
    out["ln_f.bias"] = take(prefix + "ln_f.bias")
    if missing:
        raise ValueError(f"GPT-2 checkpoint is missing tensors: {missing}")
    known = {k for k in _hf_names(n_layer, prefix)}
    extra = [k for k in hf if k not in known and not k.endswith((".attn.bias", ".attn.masked_bias", "lm_head.weight"))]
    if extra:
        raise ValueError(f"GPT-2 checkpoint has unexpected tensors: {extra}")
    return out


def _hf_names(n_layer, prefix):
    names = [prefix + "wte.weight", prefix + "wpe.weight", prefix + "ln_f.weight", prefix + "ln_f.bias"]
    for i in range(n_layer):
        for part in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            names += [f"{prefix}h.{i}.{part}.weight", f"{prefix}h.{i}.{part}.bias"]
    return names


def ours_to_hf(ours: dict, n_layer: int, prefix: str = "transformer.") -> dict:
    """{our name: array} (values or gradients) -> HF names in the Conv1D layout."""
    out = {prefix + "wte.weight": ours["wte.weight"], prefix + "wpe.weight": ours["wpe.weight"]}
    for i in range(n_layer):
        h, b = f"{prefix}h.{i}.", f"blocks.{i}."
        out[f"{h}ln_1.weight"], out[f"{h}ln_1.bias"] = ours[f"{b}attn.ln.weight"], ours[f"{b}attn.ln.bias"]
        out[f"{h}ln_2.weight"], out[f"{h}ln_2.bias"] = ours[f"{b}ffn.ln.weight"], ours[f"{b}ffn.ln.bias"]
        out[f"{h}attn.c_attn.weight"] = np.concatenate(
            [ours[f"{b}attn.sublayer.{n}.weight"].T for n in "qkv"], axis=1)
        out[f"{h}attn.c_attn.bias"] = np.concatenate([ours[f"{b}attn.sublayer.{n}.bias"] for n in "qkv"])
        for hf_name, o in (("attn.c_proj", "attn.sublayer.o"), ("mlp.c_fc", "ffn.sublayer.fc1"),
                           ("mlp.c_proj", "ffn.sublayer.fc2")):
            out[f"{h}{hf_name}.weight"] = np.ascontiguousarray(ours[f"{b}{o}.weight"].T)
            out[f"{h}{hf_name}.bias"] = ours[f"{b}{o}.bias"]
    out[prefix + "ln_f.weight"], out[prefix + "ln_f.bias"] = ours["ln_f.weight"], ours["ln_f.bias"]
    return out


def load_gpt2(path) -> GPT:
    """A GPT from a Hugging Face GPT-2 folder (config.json + model.safetensors or a sharded index)."""
    from .hf import read_folder

    cfg, hf = read_folder(path)
    config = config_from_hf(cfg)
    prefix = "transformer." if "transformer.wte.weight" in hf else ""
    model = GPT(config)
    model.load_params(hf_to_ours(hf, config.n_layer, prefix))
    return model
