"""Blocks composed from parts: an attention layer, a feed-forward, a norm (a factory: each residual branch
gets its own), each branch wrapped in a residual connection with dropout, the norm pre or post.

post (2017 paper, BERT): x = norm(x + Dropout(sublayer(x)))     pre (GPT-2, ViT): x = x + Dropout(sublayer(norm(x)))
sandwich (Gemma 2 and 3): x = x + Dropout(post_norm(sublayer(norm(x))))
"""

from __future__ import annotations

from typing import Callable


from .. import ops
from .layers import Activation, Dropout, FusedProduct, Linear, add
from .module import Module


class FeedForward(Module):
    """The MLP part: Linear(C, hidden) -> activation (ReLU as in the paper, GELU as in GPT/BERT) ->
    Linear(hidden, C)."""

    def __init__(self, C: int, hidden: int, activation: str = "gelu", bias: bool = True, std: float = 0.02,
                 out_std: float | None = None):
        self.fc1 = Linear(C, hidden, bias, std)
        self.act = Activation(activation)
        self.fc2 = Linear(hidden, C, bias, std if out_std is None else out_std)

    def forward(self, x):
        return self.fc2.forward(self.act.forward(self.fc1.forward(x)))

    def backward(self, dout):
        return self.fc1.backward(self.act.backward(self.fc2.backward(dout)))


GATED = {"silu": (ops.swiglu_forward, ops.swiglu_backward), "gelu_tanh": (ops.geglu_forward, ops.geglu_backward)}


class GatedFeedForward(Module):
    """Llama's MLP (SwiGLU): down(silu(gate(x)) * up(x)), three Linears without bias; activation "gelu_tanh":
    Gemma's GeGLU, down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, C: int, hidden: int, bias: bool = False, std: float = 0.02, out_std: float | None = None,
                 activation: str = "silu"):
        if activation not in GATED:
            raise ValueError(f"a gated feed-forward's activation must be one of {', '.join(GATED)}, got {activation!r}")
        self.product, self.product_backward = GATED[activation]
        self.gate = Linear(C, hidden, bias, std)
        self.up = Linear(C, hidden, bias, std)
        self.down = Linear(hidden, C, bias, std if out_std is None else out_std)

    _saved = None
    _gate_up = None  # gate and up as one product (inference)

    def forward(self, x):
        if self.keeps_state:
            g, u = self.gate.forward(x), self.up.forward(x)
            self._saved = (g, u)
            return self.down.forward(self.product(g, u))
        if self._gate_up is None:
            self._gate_up = FusedProduct((self.gate, self.up))
        g, u = self._gate_up(x)  # (column slices of one product where the weights fuse)
        return self.down.forward(self.product(ops.contiguous(g), ops.contiguous(u)))

    def backward(self, dout):
        g, u = self.saved(self._saved)
        dg, du = self.product_backward(self.down.backward(dout), g, u)
        return ops.add_into(self.gate.backward(dg), self.up.backward(du))


class Residual(Module):
    """One sublayer with its norm (attribute `ln`, the name checkpoints use), dropout and the residual
    connection, the norm placed "pre" or "post", or "sandwich": `ln` before and `post_ln` (post_norm) after the
    sublayer, inside the residual branch."""

    def __init__(self, sublayer: Module, norm: Module, placement: str, dropout: float = 0.0,
                 post_norm: Module | None = None):
        if placement not in ("pre", "post", "sandwich"):
            raise ValueError(f"norm placement must be 'pre', 'post' or 'sandwich', got {placement!r}")
        if (placement == "sandwich") != (post_norm is not None):
            raise ValueError("a sandwich placement takes a post_norm, and only it does")
        self.sublayer = sublayer
        self.ln = norm
        if post_norm is not None:
            self.post_ln = post_norm
        self.drop = Dropout(dropout)
        self.placement = placement

    post_ln = None

    def forward(self, x, *args, **kwargs):
        if self.placement != "post":
            y = self.sublayer.forward(self.ln.forward(x), *args, **kwargs)
            if self.post_ln is not None:
                y = self.post_ln.forward(y)
            return add(x, self.drop.forward(y))
        y = self.drop.forward(self.sublayer.forward(x, *args, **kwargs))
        return self.ln.forward(add(x, y))

    def backward(self, dout):
        """-> dx, plus the sublayer's extra input gradient (cross-attention memory) when it returns two."""
        if self.placement != "post":
            dy = self.drop.backward(dout)
            if self.post_ln is not None:
                dy = self.post_ln.backward(dy)
            dsub, extra = _pair(self.sublayer.backward(dy))
            dx = ops.add_into(self.ln.backward(dsub), dout)  # the norm's fresh output takes the skip path's gradient
        else:
            dh = self.ln.backward(dout)
            dsub, extra = _pair(self.sublayer.backward(self.drop.backward(dh)))
            dx = ops.add_into(dh, dsub)
        return dx if extra is None else (dx, extra)


def _pair(grad):
    """A sublayer's backward returns dx, or (dx, dmemory) for cross-attention."""
    return grad if isinstance(grad, tuple) else (grad, None)


class EncoderBlock(Module):
    """Bidirectional self-attention (with key padding) + feed-forward, each in a Residual.

    attn: a MultiHeadAttention (causal=False); ffn: a feed-forward part; norm: () -> a fresh norm module."""

    def __init__(self, attn: Module, ffn: Module, norm: Callable[[], Module], placement: str = "post",
                 dropout: float = 0.0):
        self.attn = Residual(attn, norm(), placement, dropout)
        self.ffn = Residual(ffn, norm(), placement, dropout)

    def forward(self, x, key_mask=None):
        return self.ffn.forward(self.attn.forward(x, None, key_mask))

    def backward(self, dout):
        return self.attn.backward(self.ffn.backward(dout))


class DecoderBlock(Module):
    """Causal self-attention, optional cross-attention over an encoder's output (memory), feed-forward, each
    in a Residual. Without cross-attention this is the GPT block. backward returns dx, or (dx, dmemory) with
    cross. attn: a causal MultiHeadAttention; cross: a non-causal one or None; norm: () -> a fresh norm."""

    def __init__(self, attn: Module, ffn: Module, norm: Callable[[], Module], placement: str = "pre",
                 dropout: float = 0.0, cross: Module | None = None):
        post = norm if placement == "sandwich" else (lambda: None)
        self.attn = Residual(attn, norm(), placement, dropout, post())
        self.cross = Residual(cross, norm(), placement, dropout, post()) if cross is not None else None
        self.ffn = Residual(ffn, norm(), placement, dropout, post())

    def forward(self, x, memory=None, memory_mask=None, cache=None, key_mask=None, memory_kv=None, positions=None):
        """cache (k, v, start) and key_mask (B, start + T): incremental decoding (MultiHeadAttention.forward);
        memory_kv: cross-attention's keys and values computed once per source (MultiHeadAttention.memory_kv);
        positions (B, T): each token's position, for rotary attention."""
        if positions is not None:
            x = self.attn.forward(x, None, key_mask, cache=cache, positions=positions)
        elif cache is not None or key_mask is not None:
            x = self.attn.forward(x, None, key_mask, cache=cache)
        else:
            x = self.attn.forward(x)
        if self.cross is not None:
            x = self.cross.forward(x, memory, memory_mask, memory_kv=memory_kv) if memory_kv is not None \
                else self.cross.forward(x, memory, memory_mask)
        return self.ffn.forward(x)

    def backward(self, dout):
        d = self.ffn.backward(dout)
        dmemory = None
        if self.cross is not None:
            d, dmemory = self.cross.backward(d)
        dx = self.attn.backward(d)
        return dx if self.cross is None else (dx, dmemory)
