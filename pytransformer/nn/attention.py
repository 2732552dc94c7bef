"""Multi-head attention: self-attention (causal or bidirectional, with key padding) and cross-attention.

Q, K and V each have their own projection (C -> C, i.e. NH heads of HS = C / NH channels, concatenated);
the heads run through the fused attention kernel and are concatenated and projected by W_O.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from .layers import Linear
from .module import Module


def heads(x, NH):
    """(B, T, C) -> (B, T, NH, HS): a view, no copy (the attention kernel's "bthd" layout)."""
    B, T, C = x.shape
    return x.reshape(B, T, NH, C // NH)


def merge_heads(x):
    """(B, T, NH, HS) -> (B, T, C): a view, no copy."""
    B, T, NH, HS = x.shape
    return x.reshape(B, T, NH * HS)


class MultiHeadAttention(Module):
    """forward(x (B, Tq, C), memory (B, Tk, C) or None, key_mask (B, Tk) or None) -> (B, Tq, C).

    Self-attention when memory is None (keys and values from x), cross-attention otherwise. causal applies
    the lower-triangular mask; key_mask (1 = attend) hides padded keys. backward returns dx, or (dx, dmemory)
    for cross-attention.
    """

    def __init__(self, C: int, NH: int, causal: bool = False, bias: bool = True, std: float = 0.02,
                 out_std: float | None = None):
        if C % NH:
            raise ValueError(f"channels {C} must be divisible by heads {NH}")
        self.NH, self.causal = NH, causal
        self.q = Linear(C, C, bias, std)
        self.k = Linear(C, C, bias, std)
        self.v = Linear(C, C, bias, std)
        self.o = Linear(C, C, bias, std if out_std is None else out_std)

    def forward(self, x, memory=None, key_mask=None):
        kv = x if memory is None else memory
        self._cross = memory is not None
        q = heads(self.q.forward(x), self.NH)
        k = heads(self.k.forward(kv), self.NH)
        v = heads(self.v.forward(kv), self.NH)
        out, lse = ops.attention_forward(q, k, v, self.causal, key_mask, layout="bthd")
        self._saved = (q, k, v, out, lse, key_mask)
        return self.o.forward(merge_heads(out))

    def backward(self, dout):
        q, k, v, out, lse, key_mask = self._saved
        dattn = heads(self.o.backward(dout), self.NH)
        dq, dk, dv = ops.attention_backward(dattn, q, k, v, out, lse, self.causal, key_mask, layout="bthd")
        dx = self.q.backward(merge_heads(dq))
        dkv = self.k.backward(merge_heads(dk))
        dkv += self.v.backward(merge_heads(dv))
        if self._cross:
            return dx, dkv
        dx += dkv
        return dx

    def attention_probs(self):
        """The softmax weights (B, NH, Tq, Tk) of the last forward, recomputed on request (float32)."""
        q, k, _, _, _, key_mask = self._saved
        q, k = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)  # (B, NH, T, HS)
        Tq, Tk, HS = q.shape[2], k.shape[2], q.shape[3]
        s = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(HS))
        visible = np.ones((1, 1, Tq, Tk), bool)
        if self.causal:
            visible = visible & (np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq))
        if key_mask is not None:
            visible = visible & np.asarray(key_mask, bool)[:, None, None, :]
        s = np.where(visible, s, np.float32(-1e30)).astype(np.float32)
        p = ops.softmax_forward(np.ascontiguousarray(s))
        return np.where(visible, p, 0.0).astype(np.float32)
