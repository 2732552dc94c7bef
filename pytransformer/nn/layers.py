"""The basic layers: Linear, LayerNorm, RMSNorm, Embedding, positional encodings (learned, sinusoidal, rotary),
activations, Dropout.

Shapes: B batch, T sequence, C channels. Every layer keeps what its backward needs from its last forward;
call forward and backward in pairs.
"""

from __future__ import annotations

import math

import numpy as np

from .. import ops
from . import rope_scaling, weights
from .module import Module, Parameter, normal, ones, zeros

_F32 = np.dtype(np.float32)


def _ready(x, width) -> bool:
    """x needs no checking before a kernel: a float32 C-contiguous array whose last axis is `width` wide (the
    layers' own parameters are known-good; anything else takes the checked ops call, which names the problem)."""
    return type(x) is np.ndarray and x.dtype == _F32 and x.ndim >= 1 and x.shape[-1] == width and x.flags.c_contiguous


def add(a, b):
    """a + b for two activations of one shape (the residual stream): straight to the kernel when both are ready."""
    if type(b) is np.ndarray and b.shape == a.shape and _ready(a, a.shape[-1] if a.ndim else 0) and _ready(
            b, b.shape[-1] if b.ndim else 0):
        return ops.unchecked_residual(a, b)
    return ops.residual_forward(a, b)


class HoldsWeight:
    """A layer that multiplies with a weight object (nn.weights): `stored`, by default its float32 Parameter
    itself. set_weight_dtype("bfloat16" | "int8") swaps in a narrow copy for inference (the Parameter stays, so
    "float32" returns to training); set_quantized swaps in GGUF blocks, and the float32 Parameter is then left
    unwritten (no memory used) until set_weight_dtype widens the blocks into it."""

    _stored = None
    frozen = False  # an adapter trains (nn.lora.attach): no gradient of its own, the input's flows through

    @property
    def stored(self) -> weights.Weight:
        if self._stored is None:
            self._stored = weights.Float32Weight(self.weight)
        return self._stored

    @stored.setter
    def stored(self, weight) -> None:
        if tuple(weight.shape) != tuple(self.weight.shape):
            raise ValueError(f"a {weight.kind} weight {tuple(weight.shape)} does not fit {type(self).__name__} "
                             f"{tuple(self.weight.shape)}")
        self._stored = weight
        weights.changed()

    @property
    def quantized(self):
        """The ops.Quantized blocks this layer's values come from while its Parameter is unwritten, else None."""
        return self._stored.blocks if isinstance(self._stored, weights.BlockWeight) else None

    def set_quantized(self, blocks) -> None:
        self.stored = weights.BlockWeight(blocks)

    def set_weight_dtype(self, dtype: str) -> None:
        stored = weights.convert(self.weight, dtype) if self.quantized is None else None  # (checks dtype first)
        if stored is None:
            ops.dequantize(self.quantized, out=self.weight.data)
            stored = weights.convert(self.weight, dtype)
        self.stored = stored

    def to_device(self, device: str) -> None:
        """Move the weight object with the model (Model.to): each format decides what it becomes there."""
        self.stored = self.stored.to(device) or weights.Float32Weight(self.weight)

    def product(self, x, bias):
        """x (..., IC) @ weight^T + bias, in the stored format."""
        return self.stored.forward(x, bias)

    def check_trainable(self):
        if not self.stored.trainable:
            raise RuntimeError(f"{type(self).__name__} multiplies with {self.stored.kind} weights (inference); call "
                               "model.set_weight_dtype('float32') before training")


class Linear(HoldsWeight, Module):
    """y (..., out) = x (..., in) @ W^T + b; W (out, in) as in torch."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, std: float = 0.02):
        self.weight = Parameter((out_features, in_features), normal(std))
        self.bias = Parameter((out_features,), zeros) if bias else None

    _x = None

    def forward(self, x):
        if self.keeps_state:
            self._x = x
        return self.product(x, self.bias.data if self.bias is not None else None)

    def backward(self, dout):
        if self.frozen:
            return self.stored.backward(dout)
        self.check_trainable()
        dx, _, _ = ops.matmul_backward(dout, self.saved(self._x), self.weight.data, dweight=self.weight.grad,
                                       dbias=self.bias.grad if self.bias is not None else None,
                                       compute_dbias=self.bias is not None)
        return dx


class FusedProduct:
    """Several Linears of one input (attention's q, k, v; a gated feed-forward's gate and up) as one product for
    inference: one kernel call, one pass of the threads over all their weights. The weights' own class fuses them
    (nn.weights: float32 as a view of adjacent Parameters, GGUF blocks as a view of adjacent blocks, narrow
    copies concatenated once); remade when any weight was swapped or moved (weights.generation). Weights that
    cannot be fused take one product each. __call__(x) -> one output per layer (views of one array)."""

    def __init__(self, layers):
        self.layers = tuple(layers)
        self.generation, self.fused = None, None
        self.cuts = np.cumsum([m.weight.shape[0] for m in self.layers])[:-1].tolist()

    def weight(self):
        """The fused weight object, or None when the layers' weights do not fuse."""
        if self.generation != weights.generation():
            self.fused = weights.fuse([m.stored for m in self.layers])
            self.generation = weights.generation()
        return self.fused

    def bias(self):
        """The layers' biases side by side (a view when adjacent), or None without biases."""
        if self.layers[0].bias is None:
            return None
        biases = [m.bias.data for m in self.layers]
        joined = weights.adjacent(biases)
        return joined if joined is not None else np.concatenate(biases)

    def specs(self):
        """The C++ plan's specs: the fused weight's, or each layer's when they do not fuse (biases apart)."""
        fused = self.weight()
        return [fused.spec()] if fused is not None else [m.stored.spec() for m in self.layers]

    def __call__(self, x):
        fused = self.weight()
        if fused is None or any((m.bias is None) != (self.layers[0].bias is None) for m in self.layers):
            together = weights.products([m.stored for m in self.layers], x,
                                        [None if m.bias is None else m.bias.data for m in self.layers])
            return tuple(together) if together is not None else tuple(m.forward(x) for m in self.layers)
        y = fused.forward(x, self.bias())
        bounds = [0] + self.cuts + [y.shape[-1]]
        return tuple(y[..., a:b] for a, b in zip(bounds, bounds[1:]))


class TiedLMHead(HoldsWeight, Module):
    """logits (..., V) = x (..., C) @ table (V, C)^T (+ bias (V)): the output layer that shares its weight with
    the token embedding (GPT-2, BERT's masked-LM decoder, the 2017 paper). Holds the embedding's Parameter (and
    an optional bias Parameter the model declares), so both are stored once and the table's gradient adds up
    from both uses."""

    def __init__(self, table: Parameter, bias: Parameter | None = None):
        self.weight = table
        self.bias = bias

    _x = None

    def forward(self, x):
        if self.keeps_state:
            self._x = x
        return self.product(x, None if self.bias is None else self.bias.data)

    def backward(self, dlogits):
        if self.frozen:
            return self.stored.backward(dlogits)
        self.check_trainable()
        dx, _, _ = ops.matmul_backward(dlogits, self.saved(self._x), self.weight.data, dweight=self.weight.grad,
                                       dbias=None if self.bias is None else self.bias.grad,
                                       compute_dbias=self.bias is not None)
        return dx


class LayerNorm(Module):
    """Normalise the last axis (C), then scale and shift."""

    def __init__(self, C: int, eps: float = 1e-5):
        self.weight = Parameter((C,), ones)
        self.bias = Parameter((C,), zeros)
        self.eps = eps

    _saved = None

    def forward(self, x):
        C = self.weight.shape[0]
        if C and _ready(x, C):  # (the per-token path of decoding; else the checked call)
            out, mean, rstd = ops.unchecked_layernorm(x, self.weight.data, self.bias.data, self.eps)
        else:
            out, mean, rstd = ops.layernorm_forward(x, self.weight.data, self.bias.data, self.eps)
        if self.keeps_state:
            self._saved = (x, mean, rstd)
        return out

    def backward(self, dout):
        x, mean, rstd = self.saved(self._saved)
        dx, _, _ = ops.layernorm_backward(dout, x, self.weight.data, mean, rstd, dweight=self.weight.grad,
                                          dbias=self.bias.grad)
        return dx


class RMSNorm(Module):
    """Llama's norm: x * rsqrt(mean(x^2) + eps) * weight over the last axis (C); no shift. offset 1: the scale is
    (1 + weight), the weight starting at 0 (Gemma); the gradient of weight is the same either way."""

    def __init__(self, C: int, eps: float = 1e-5, offset: float = 0.0):
        self.weight = Parameter((C,), zeros if offset else ones)
        self.eps, self.offset = eps, offset

    _saved = None

    def scale(self):
        """The factor the normalised rows are multiplied by (C,): weight, or weight + offset."""
        if not self.offset:
            return self.weight.data
        w = self.weight.data  # (C,): offset + w where w lives
        return ops.add_into(ops.like(np.full(w.shape, self.offset, np.float32), w), w)

    def forward(self, x):
        C = self.weight.shape[0]
        if C and _ready(x, C):  # (the per-token path of decoding; else the checked call)
            out, rstd = ops.unchecked_rmsnorm(x, self.scale(), self.eps)
        else:
            out, rstd = ops.rmsnorm_forward(x, self.scale(), self.eps)
        if self.keeps_state:
            self._saved = (x, rstd)
        return out

    def backward(self, dout):
        x, rstd = self.saved(self._saved)
        dx, _ = ops.rmsnorm_backward(dout, x, self.scale(), rstd, dweight=self.weight.grad)
        return dx


class Embedding(Module):
    """out (..., C) = table (V, C)[ids (...)]. padding_idx (as torch): that row gets no gradient. The table may be
    held quantised (a GGUF file's, set_quantized): rows are then dequantised as they are looked up."""

    def __init__(self, V: int, C: int, std: float = 0.02, padding_idx: int | None = None):
        self.weight = Parameter((V, C), normal(std))
        self.padding_idx = padding_idx

    _ids = None
    quantized = None

    def set_quantized(self, table) -> None:
        if table.shape != self.weight.shape:
            raise ValueError(f"quantised table {table.shape} does not fit the embedding {self.weight.shape}")
        self.quantized = table

    def to_device(self, device: str) -> None:
        if self.quantized is not None:  # (GGUF blocks move as they are; lookups decode rows where they live)
            self.quantized = self.quantized.to(device)

    def set_weight_dtype(self, dtype: str) -> None:
        """Any dtype widens a quantised table into the float32 Parameter (lookups are float32 either way)."""
        if self.quantized is not None:
            ops.dequantize(self.quantized, out=self.weight.data)
            self.quantized = None

    def forward(self, ids):
        if self.keeps_state:
            self._ids = ids
        if self.quantized is not None:
            V = self.weight.shape[0]
            ids = np.asarray(ids)
            if ids.size and (ids.min() < 0 or ids.max() >= V):
                raise ValueError(f"ids must lie in [0, {V})")
            return ops.dequantize(self.quantized, ops.like(ids, self.quantized.data, np.int64))
        ids = ops.like(ids, self.weight.data)  # (ids go where the table lives)
        if self.keeps_state:
            self._ids = ids
        return ops.embedding_forward(ids, self.weight.data)

    def backward(self, dout):
        if self.quantized is not None:
            raise RuntimeError("the embedding holds a quantised table (inference); call "
                               "model.set_weight_dtype('float32') before training")
        ids = self.saved(self._ids)
        padding_row = None if self.padding_idx is None else self.weight.grad[self.padding_idx].copy()
        ops.embedding_backward(dout, ids, self.weight.shape[0], dtable=self.weight.grad)
        if padding_row is not None:  # (the padding row takes no gradient: put back as it was)
            ops.copy_into(self.weight.grad[self.padding_idx], padding_row)
        return None  # ids have no gradient


class LearnedPositions(Module):
    """x (B, T, C) + table (T_max, C)[0:T] (GPT-2, BERT, ViT)."""

    def __init__(self, max_positions: int, C: int, std: float = 0.02):
        self.weight = Parameter((max_positions, C), normal(std))

    _position_ids = None

    def forward(self, x, position_ids=None):
        """position_ids (B, T): each row's own positions (a left-padded batch counts from its first real
        token); default 0 .. T-1 for every row."""
        T = x.shape[1]
        if position_ids is None:
            if T > self.weight.shape[0]:
                raise ValueError(f"sequence length {T} exceeds the {self.weight.shape[0]} learned positions")
            position_ids = np.broadcast_to(np.arange(T, dtype=np.int64), x.shape[:2])
        position_ids = np.asarray(position_ids)
        if position_ids.shape != x.shape[:2] or position_ids.size and (
                position_ids.min() < 0 or position_ids.max() >= self.weight.shape[0]):
            raise ValueError(f"position_ids must be {x.shape[:2]} in [0, {self.weight.shape[0]})")
        position_ids = ops.like(position_ids, x, np.int64)  # (the rows gathered like embeddings)
        if self.keeps_state:
            self._position_ids = position_ids
        return ops.residual_forward(x, ops.embedding_forward(position_ids, self.weight.data))

    def backward(self, dout):
        ops.embedding_backward(dout, self._position_ids, self.weight.shape[0], dtable=self.weight.grad)
        return dout


def sinusoidal_table(T: int, C: int, layout: str = "interleaved") -> np.ndarray:
    """PE[pos, 2i] = sin(pos / 10000^(2i/C)), PE[pos, 2i+1] = cos(...): sine and cosine interleaved, as the paper's
    formula (Vaswani et al., 2017). layout="halves": every sine first, then every cosine (how some explainers draw
    it, and tensor2tensor's code); the same columns up to a fixed permutation of the channels."""
    if layout not in ("interleaved", "halves"):
        raise ValueError(f"layout must be 'interleaved' or 'halves', got {layout!r}")
    pos = np.arange(T)[:, None]
    i = np.arange(0, C, 2)[None, :]
    angle = pos / np.power(10000.0, i / C)
    table = np.zeros((T, C))
    if layout == "halves":
        half = (C + 1) // 2
        table[:, :half] = np.sin(angle)
        table[:, half:] = np.cos(angle[:, : C // 2])
    else:
        table[:, 0::2] = np.sin(angle)
        table[:, 1::2] = np.cos(angle[:, : C // 2])
    return table.astype(np.float32)


class SinusoidalPositions(Module):
    """x (B, T, C) + the fixed sinusoidal table (sine and cosine interleaved, or in two halves); no parameters."""

    def __init__(self, max_positions: int, C: int, layout: str = "interleaved"):
        self.table = sinusoidal_table(max_positions, C, layout)

    def forward(self, x, position_ids=None):
        """position_ids (B, T): each row's own positions (incremental decoding); default 0 .. T-1."""
        T = x.shape[1]
        if position_ids is not None:
            position_ids = np.asarray(position_ids)
            if position_ids.shape != x.shape[:2] or position_ids.size and (
                    position_ids.min() < 0 or position_ids.max() >= self.table.shape[0]):
                raise ValueError(f"position_ids must be {x.shape[:2]} in [0, {self.table.shape[0]})")
            return ops.residual_forward(x, ops.like(self.table[position_ids], x, np.float32))
        if T > self.table.shape[0]:
            raise ValueError(f"sequence length {T} exceeds the {self.table.shape[0]} positions of the table")
        return ops.residual_forward(x, ops.like(np.broadcast_to(self.table[:T], x.shape), x, np.float32))

    def backward(self, dout):
        return dout


class Rotary:
    """Rotary positions (RoPE) for one attention layer's queries and keys (B, T, heads, head_dim), base theta; no
    parameters. Pairs (i, i + head_dim / 2) as Hugging Face's rotate_half, or (2i, 2i + 1) when interleaved (q and
    k projections whose rows are in llama.cpp's order, as GGUF files store them). scaling: a Hugging Face
    rope_scaling dict (nn.rope_scaling's rules), max_positions the model's max_position_embeddings. The cos/sin
    tables (positions, head_dim / 2) are computed in float64 (rounded to float32) and grown when a longer position
    is asked for; a call takes the frequency set transformers would for its largest position (longrope)."""

    def __init__(self, head_dim: int, base: float = 10000.0, positions: int = 2048, interleaved: bool = False,
                 scaling: dict | None = None, max_positions: int = 2048):
        self.head_dim, self.base, self.interleaved = head_dim, base, interleaved
        self.frequencies = rope_scaling.frequencies(head_dim, base, scaling, max_positions)
        self._tables = {}  # the frequency set's name -> (cos, sin)
        self.tables(max(1, positions) - 1)

    def tables(self, max_position):
        """(cos, sin) of the frequencies a call reaching max_position uses, holding at least its rows."""
        name, inv_freq = self.frequencies.pick(max_position)
        held = self._tables.get(name)
        if held is None or max_position >= held[0].shape[0]:
            rows = max_position + 1 if held is None else max(2 * held[0].shape[0], max_position + 1)
            held = self._tables[name] = ops.rope_tables(rows, self.head_dim, self.base, inv_freq,
                                                        self.frequencies.attention_factor)
        return held

    _moved = None  # (cos, its copy where the last x lived, sin's copy), kept until the tables change or x moves

    def _on(self, x, positions):
        """The call's tables and positions where x lives (copies kept until the tables change)."""
        cos, sin = self.tables(int(positions.max()) if positions.size else 0)
        if self._moved is None or self._moved[0] is not cos or ops.device_of(self._moved[1]) != ops.device_of(x):
            self._moved = (cos, ops.like(cos, x), ops.like(sin, x))
        return (*self._moved[1:], ops.like(positions, x, np.int64))

    def forward(self, x, positions, out=None):
        """x (B, T, H, HS), positions int64 (B, T) (checked: >= 0) -> rotated (out may be x)."""
        if positions.size and positions.min() < 0:
            raise ValueError("positions must be >= 0")
        cos, sin, positions = self._on(x, positions)
        return ops.rope_forward(x, cos, sin, positions, interleaved=self.interleaved, out=out)

    def backward(self, dout, positions):
        cos, sin, positions = self._on(dout, positions)
        return ops.rope_backward(dout, cos, sin, positions, interleaved=self.interleaved, dinp=dout)


class Activation(Module):
    """'gelu' (tanh approximation, GPT-2), 'gelu_exact' (erf, BERT/ViT) or 'relu' (2017 paper)."""

    def __init__(self, kind: str = "gelu"):
        if kind not in ("gelu", "gelu_exact", "relu"):
            raise ValueError(f"activation must be 'gelu', 'gelu_exact' or 'relu', got {kind!r}")
        self.kind = kind

    _x = None

    def forward(self, x):
        if self.keeps_state:
            self._x = x
        if self.kind == "relu":
            return ops.relu_forward(x)
        return ops.gelu_forward(x, "tanh" if self.kind == "gelu" else "none")

    def backward(self, dout):
        x = self.saved(self._x)
        if self.kind == "relu":
            return ops.relu_backward(dout, x)
        return ops.gelu_backward(dout, x, "tanh" if self.kind == "gelu" else "none")


class Scale(Module):
    """x * factor, the factor rounded to float32 (Gemma's embeddings times sqrt(C), as transformers rounds it).
    forward and backward overwrite their argument (the fresh output of the layer next to it)."""

    def __init__(self, factor: float):
        self.factor = float(np.float32(factor))

    def forward(self, x):
        return ops.scale_(x, self.factor)  # (in place: x is the layer below's fresh output)

    def backward(self, dout):
        return ops.scale_(dout, self.factor)


class SoftCap(Module):
    """cap * tanh(x / cap) (Gemma's final logit soft-capping). forward and backward overwrite their argument (the
    fresh logits, the loss's fresh gradient)."""

    def __init__(self, cap: float):
        self.cap = float(cap)

    _t = None

    def forward(self, x):
        t = ops.tanh_forward(ops.scale_(x, 1.0 / self.cap))  # (in place: x is the layer below's fresh output)
        if self.keeps_state:
            self._t = t
        return ops.scale_(t.copy() if self.keeps_state else t, self.cap)

    def backward(self, dout):
        return ops.tanh_backward(dout, self.saved(self._t), dinp=dout)


class Dropout(Module):
    """Inverted dropout, active only in training mode. Each forward draws a fresh seed from `rng` (shared by
    the model's dropout layers and saved in its checkpoints), so runs are reproducible."""

    def __init__(self, p: float = 0.0):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p
        self.rng: np.random.Generator | None = None
        self._seed = None

    def forward(self, x):
        if not self.training:
            return x
        if self.p == 0.0:
            self._seed = None
            return x
        if self.rng is None:
            raise RuntimeError("Dropout.rng is unset: build the layer inside a model (Model.seed_dropout)")
        self._seed = int(self.rng.integers(0, 2**63))
        return ops.dropout_forward(x, self.p, self._seed)

    def backward(self, dout):
        return dout if self._seed is None else ops.dropout_backward(dout, self.p, self._seed)


def init_std_residual(std: float, n_layer: int) -> float:
    """GPT-2's scaled init for projections that feed the residual stream: std / sqrt(2 * n_layer)."""
    return std / math.sqrt(2 * n_layer)
