"""Functional PyTorch mirrors of pytransformer's models, built from a model's own parameter names, so that
logits, losses and every gradient can be compared one to one (the way llm.c's test_gpt2 checks itself)."""

from __future__ import annotations

import math

import numpy as np


def params_from(model, torch):
    """name -> float64 leaf tensor requiring grad, from the model's current values."""
    return {name: torch.tensor(p.data, dtype=torch.float64, requires_grad=True) for name, p in model.params}


def layer_norm(torch, x, P, prefix, eps):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], P[prefix + "weight"], P[prefix + "bias"], eps)


def linear(torch, x, P, prefix):
    b = P.get(prefix + "bias")
    return torch.nn.functional.linear(x, P[prefix + "weight"], b)


def attention(torch, x, memory, P, prefix, NH, causal, key_mask=None):
    F = torch.nn.functional
    kv = x if memory is None else memory
    B, Tq, C = x.shape
    Tk = kv.shape[1]
    q = linear(torch, x, P, prefix + "q.").view(B, Tq, NH, C // NH).transpose(1, 2)
    k = linear(torch, kv, P, prefix + "k.").view(B, Tk, NH, C // NH).transpose(1, 2)
    v = linear(torch, kv, P, prefix + "v.").view(B, Tk, NH, C // NH).transpose(1, 2)
    mask = torch.ones(Tq, Tk, dtype=torch.bool)
    if causal:
        mask = torch.arange(Tk)[None, :] <= torch.arange(Tq)[:, None] + (Tk - Tq)
    mask = mask[None, None]
    if key_mask is not None:
        mask = mask & torch.from_numpy(np.asarray(key_mask, bool))[:, None, None, :]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(C // NH)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return linear(torch, (p @ v).transpose(1, 2).reshape(B, Tq, C), P, prefix + "o.")


def feed_forward(torch, x, P, prefix, activation):
    F = torch.nn.functional
    h = linear(torch, x, P, prefix + "fc1.")
    h = {"gelu": lambda t: F.gelu(t, approximate="tanh"), "gelu_exact": F.gelu, "relu": F.relu}[activation](h)
    return linear(torch, h, P, prefix + "fc2.")


def residual(torch, x, P, prefix, norm, eps, sublayer):
    """pre: x + f(LN(x)); post: LN(x + f(x)); the sublayer's parameters under prefix + 'sublayer.'"""
    if norm == "pre":
        return x + sublayer(layer_norm(torch, x, P, prefix + "ln.", eps))
    return layer_norm(torch, x + sublayer(x), P, prefix + "ln.", eps)


def gpt_logits(torch, P, idx, cfg):
    T = idx.shape[1]
    x = P["wte.weight"][torch.from_numpy(idx)] + P["wpe.weight"][:T]
    eps = cfg.layer_norm_eps
    for l in range(cfg.n_layer):
        pre = f"blocks.{l}."
        x = residual(torch, x, P, pre + "attn.", "pre", eps,
                     lambda h: attention(torch, h, None, P, pre + "attn.sublayer.", cfg.n_head, True))
        x = residual(torch, x, P, pre + "ffn.", "pre", eps,
                     lambda h: feed_forward(torch, h, P, pre + "ffn.sublayer.", "gelu"))
    x = layer_norm(torch, x, P, "ln_f.", eps)
    return x @ P["wte.weight"].T
