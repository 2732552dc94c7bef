"""FeedForward, EncoderBlock and DecoderBlock, each with residual connections and post-LN (2017 paper, BERT)
or pre-LN (GPT-2) as a choice.

post-LN: x = LN(x + Dropout(Sublayer(x)))       pre-LN: x = x + Dropout(Sublayer(LN(x)))
"""

from __future__ import annotations

from .. import ops
from .attention import MultiHeadAttention
from .layers import Activation, Dropout, LayerNorm, Linear
from .module import Module


class FeedForward(Module):
    """Linear(C, hidden) -> activation (ReLU as in the paper, GELU as in GPT/BERT) -> Linear(hidden, C)."""

    def __init__(self, C: int, hidden: int, activation: str = "gelu", bias: bool = True, std: float = 0.02,
                 out_std: float | None = None):
        self.fc1 = Linear(C, hidden, bias, std)
        self.act = Activation(activation)
        self.fc2 = Linear(hidden, C, bias, std if out_std is None else out_std)

    def forward(self, x):
        return self.fc2.forward(self.act.forward(self.fc1.forward(x)))

    def backward(self, dout):
        return self.fc1.backward(self.act.backward(self.fc2.backward(dout)))


class _Residual(Module):
    """One sublayer with its LayerNorm, dropout and residual connection, pre- or post-LN."""

    def __init__(self, sublayer: Module, C: int, norm: str, dropout: float, eps: float):
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.sublayer = sublayer
        self.ln = LayerNorm(C, eps)
        self.drop = Dropout(dropout)
        self.norm = norm

    def forward(self, x, *args, **kwargs):
        if self.norm == "pre":
            y = self.drop.forward(self.sublayer.forward(self.ln.forward(x), *args, **kwargs))
            return ops.residual_forward(x, y)
        y = self.drop.forward(self.sublayer.forward(x, *args, **kwargs))
        return self.ln.forward(ops.residual_forward(x, y))

    def backward(self, dout):
        """-> dx, plus the sublayer's extra input gradient (cross-attention memory) when it returns two."""
        if self.norm == "pre":
            dsub, extra = _pair(self.sublayer.backward(self.drop.backward(dout)))
            dx = ops.residual_forward(dout, self.ln.backward(dsub))
        else:
            dh = self.ln.backward(dout)
            dsub, extra = _pair(self.sublayer.backward(self.drop.backward(dh)))
            dx = ops.residual_forward(dh, dsub)
        return dx if extra is None else (dx, extra)


def _pair(grad):
    """A sublayer's backward returns dx, or (dx, dmemory) for cross-attention."""
    return grad if isinstance(grad, tuple) else (grad, None)


class EncoderBlock(Module):
    """Bidirectional self-attention (with key padding) + feed-forward."""

    def __init__(self, C: int, NH: int, hidden: int, activation: str = "gelu", norm: str = "post",
                 dropout: float = 0.0, eps: float = 1e-5, bias: bool = True, std: float = 0.02,
                 out_std: float | None = None):
        self.attn = _Residual(MultiHeadAttention(C, NH, False, bias, std, out_std), C, norm, dropout, eps)
        self.ffn = _Residual(FeedForward(C, hidden, activation, bias, std, out_std), C, norm, dropout, eps)

    def forward(self, x, key_mask=None):
        return self.ffn.forward(self.attn.forward(x, None, key_mask))

    def backward(self, dout):
        return self.attn.backward(self.ffn.backward(dout))


class DecoderBlock(Module):
    """Causal self-attention, optional cross-attention over an encoder's output (memory), feed-forward.
    Without cross-attention this is the GPT block. backward returns dx, or (dx, dmemory) with cross."""

    def __init__(self, C: int, NH: int, hidden: int, cross: bool = False, activation: str = "gelu",
                 norm: str = "pre", dropout: float = 0.0, eps: float = 1e-5, bias: bool = True, std: float = 0.02,
                 out_std: float | None = None):
        self.attn = _Residual(MultiHeadAttention(C, NH, True, bias, std, out_std), C, norm, dropout, eps)
        self.cross = _Residual(MultiHeadAttention(C, NH, False, bias, std, out_std), C, norm, dropout, eps) if cross else None
        self.ffn = _Residual(FeedForward(C, hidden, activation, bias, std, out_std), C, norm, dropout, eps)

    def forward(self, x, memory=None, memory_mask=None):
        x = self.attn.forward(x)
        if self.cross is not None:
            x = self.cross.forward(x, memory, memory_mask)
        return self.ffn.forward(x)

    def backward(self, dout):
        d = self.ffn.backward(dout)
        dmemory = None
        if self.cross is not None:
            d, dmemory = self.cross.backward(d)
        dx = self.attn.backward(d)
        return dx if self.cross is None else (dx, dmemory)
