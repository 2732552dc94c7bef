"""Multi-head attention: self-attention (causal or bidirectional, with key padding) and cross-attention, with
grouped key/value heads.

Shapes: NH query heads and NKV key/value heads of HS channels each. Q projects C -> NH * HS, K and V project
C -> NKV * HS, W_O projects NH * HS -> C; HS defaults to C / NH but is a parameter of its own (the GPT-3 table
has models whose NH * HS differs from C), and NKV (default NH) must divide NH: query head h reads key/value head
h // (NH / NKV), as in Llama's grouped-query attention; the fused attention kernel reads the grouped heads in
place. `rope` (an nn.Rotary) rotates queries and keys by their positions (Llama) before attention; `qk_norm` (a
factory of norms over HS) normalises each query and key head before that (Qwen3, Gemma 3); `window` > 0 (causal
only) lets each query see only the `window` latest keys up to its own (sliding-window attention, Mistral, Gemma 3);
`scale` replaces 1 / sqrt(HS) (Gemma's query_pre_attn_scalar ** -0.5).
"""

from __future__ import annotations


import numpy as np

from .. import ops
from ..reference import attention_visible
from .layers import FusedProduct, Linear
from .module import Module


def heads(x, NH):
    """(B, T, NH * HS) -> (B, T, NH, HS): a view, no copy (the attention kernel's "bthd" layout)."""
    B, T, C = x.shape
    return x.reshape(B, T, NH, C // NH)


def merge_heads(x):
    """(B, T, NH, HS) -> (B, T, NH * HS): a view, no copy."""
    B, T, NH, HS = x.shape
    return x.reshape(B, T, NH * HS)


class MultiHeadAttention(Module):
    """forward(x (B, Tq, C), memory (B, Tk, C) or None, key_mask (B, Tk) or None) -> (B, Tq, C).

    Self-attention when memory is None (keys and values from x), cross-attention otherwise. causal applies
    the lower-triangular mask; key_mask (1 = attend) hides padded keys. backward returns dx, or (dx, dmemory)
    for cross-attention. n_kv_head (default n_head) and head_dim (default C / n_head) are free parameters.
    """

    def __init__(self, C: int, NH: int, causal: bool = False, bias: bool = True, std: float = 0.02,
                 out_std: float | None = None, *, n_kv_head: int | None = None, head_dim: int | None = None,
                 rope=None, o_bias: bool | None = None, qk_norm=None, window: int = 0, scale: float | None = None):
        if head_dim is None:
            if C % NH:
                raise ValueError(f"channels {C} must be divisible by heads {NH} (or give head_dim)")
            head_dim = C // NH
        NKV = NH if n_kv_head is None else n_kv_head
        if NKV < 1 or NH % NKV:
            raise ValueError(f"key/value heads {NKV} must divide query heads {NH}")
        self.NH, self.NKV, self.HS, self.causal = NH, NKV, head_dim, causal
        if window and not causal:
            raise ValueError(f"a window ({window}) needs causal attention")
        self.rope, self.window, self.scale = rope, window, scale
        if qk_norm is not None:  # (named as checkpoints name them)
            self.q_norm, self.k_norm = qk_norm(), qk_norm()
        self.q = Linear(C, NH * head_dim, bias, std)
        self.k = Linear(C, NKV * head_dim, bias, std)
        self.v = Linear(C, NKV * head_dim, bias, std)
        self.o = Linear(NH * head_dim, C, bias if o_bias is None else o_bias, std if out_std is None else out_std)

    _saved = None
    q_norm = k_norm = None
    keep_probs = False  # keep q and k under evaluating() too, for attention_probs() (Model.attention_maps)

    def memory_kv(self, memory):
        """Cross-attention's keys and values of an encoder output (B, S, C), computed once per source and given
        back to forward(..., memory_kv=) at every decoding step: (k, v), each (B, S, NKV, HS)."""
        return heads(self.k.forward(memory), self.NKV), heads(self.v.forward(memory), self.NKV)

    def _positions(self, x, positions, start=0):
        """int64 (B, T) positions for rotary attention: as given, or start .. start + T for every row."""
        B, T = x.shape[:2]
        if positions is None:
            return np.ascontiguousarray(np.broadcast_to(np.arange(start, start + T, dtype=np.int64), (B, T)))
        positions = np.asarray(positions)
        if positions.shape != (B, T) or positions.dtype.kind not in "iu":
            raise ValueError(f"positions must be integers of shape {(B, T)}, got {positions.dtype} {positions.shape}")
        return np.ascontiguousarray(positions, np.int64)

    def forward(self, x, memory=None, key_mask=None, cache=None, memory_kv=None, positions=None):
        """cache: (k, v, start) for incremental decoding, k and v (B, T_max, NKV, HS) preallocated: the new keys
        and values go to rows start .. start + Tq and the queries attend to rows 0 .. start + Tq (key_mask is
        then (B, start + Tq)). Inference only: nothing is kept for backward. positions (B, Tq): each query's
        position for rotary attention (default 0 .. Tq - 1, or start .. start + Tq - 1 with a cache)."""
        if key_mask is not None:
            key_mask = ops.like(key_mask, x, bool)  # (the mask goes where the activations live)
        if cache is not None:
            return self._forward_cached(x, key_mask, *cache, positions)
        if memory_kv is not None:  # cross-attention over keys and values computed once (inference)
            out, _ = ops.attention_forward(heads(self.q.forward(x), self.NH), *memory_kv, self.causal, key_mask,
                                           layout="bthd")
            return self.o.forward(merge_heads(out))
        kv = x if memory is None else memory
        q, k = self._normed(heads(self.q.forward(x), self.NH), heads(self.k.forward(kv), self.NKV))
        v = heads(self.v.forward(kv), self.NKV)
        if self.rope is not None:  # (self-attention: queries and keys share positions)
            positions = self._positions(x, positions)
            self.rope.forward(q, positions, out=q)
            self.rope.forward(k, positions, out=k)
        out, lse = ops.attention_forward(q, k, v, self.causal, key_mask, self.scale, layout="bthd",
                                         window=self.window)
        if self.keeps_state or self.keep_probs:
            self._saved = (q, k, v, out, lse, key_mask, memory is not None, positions)
        return self.o.forward(merge_heads(out))

    def _normed(self, q, k):
        """q (B, T, NH, HS), k (B, T, NKV, HS) through the q/k norms (each head over HS), when there are any."""
        if self.q_norm is None:
            return q, k
        return self.q_norm.forward(q), self.k_norm.forward(k)

    _qkv = None  # the fused q|k|v product used when decoding

    def _forward_cached(self, x, key_mask, k_cache, v_cache, start, positions=None):
        """The cached path of decoding: q|k|v in one product where the weights fuse, rotary positions applied,
        the new keys and values written into the cache, attention over the cache in place (grouped heads too:
        the kernel skips the rows past `end`)."""
        B, T = x.shape[:2]
        end = start + T
        if end > k_cache.shape[1]:
            raise ValueError(f"the KV cache holds {k_cache.shape[1]} positions; {end} were asked for")
        if self._qkv is None:
            self._qkv = FusedProduct((self.q, self.k, self.v))
        NH, NKV, HS = self.NH, self.NKV, self.HS
        q, k, v = (ops.contiguous(a) for a in self._qkv(x))
        q, k = self._normed(q.reshape(B, T, NH, HS), k.reshape(B, T, NKV, HS))
        v = v.reshape(B, T, NKV, HS)
        if self.rope is not None:
            positions = self._positions(x, positions, start)
            self.rope.forward(q, positions, out=q)
            self.rope.forward(k, positions, out=k)
        ops.write_rows(k_cache, start, k)
        ops.write_rows(v_cache, start, v)
        out, _ = ops.attention_forward(q, k_cache, v_cache, self.causal, key_mask, self.scale, layout="bthd",
                                       kv_len=end, window=self.window)
        return self.o.forward(merge_heads(out))

    def backward(self, dout):
        q, k, v, out, lse, key_mask, cross, positions = self.saved(self._saved)
        dattn = heads(self.o.backward(dout), self.NH)
        dq, dk, dv = ops.attention_backward(dattn, q, k, v, out, lse, self.causal, key_mask, self.scale,
                                            layout="bthd", window=self.window)
        if self.rope is not None:
            self.rope.backward(dq, positions)
            self.rope.backward(dk, positions)
        if self.q_norm is not None:
            dq, dk = self.q_norm.backward(dq), self.k_norm.backward(dk)
        dx = self.q.backward(merge_heads(dq))
        dkv = self.k.backward(merge_heads(dk))
        ops.add_into(dkv, self.v.backward(merge_heads(dv)))
        if cross:
            return dx, dkv
        return ops.add_into(dx, dkv)

    def attention_probs(self):
        """The softmax weights (B, NH, Tq, Tk) of the last forward, recomputed on request (float32)."""
        q, k, _, _, _, key_mask, _, _ = self.saved(self._saved, "attention_probs")
        k = np.repeat(k, self.NH // self.NKV, axis=2)  # grouped key heads, one per query head
        q, k = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)  # (B, NH, T, HS)
        Tq, Tk, HS = q.shape[2], k.shape[2], q.shape[3]
        s = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(HS) if self.scale is None else self.scale)
        visible = attention_visible(Tq, Tk, self.causal, key_mask, self.window)
        s = np.where(visible, s, np.float32(-1e30)).astype(np.float32)
        p = ops.softmax_forward(np.ascontiguousarray(s))
        return np.where(visible, p, 0.0).astype(np.float32)
