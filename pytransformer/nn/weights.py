"""Weights that know their product: one small class per storage format of a (OC, IC) matrix.

A layer (Linear, TiedLMHead) keeps its float32 Parameter for training and multiplies with `layer.stored`, one of:

    Float32Weight   the Parameter itself (or a fused view of adjacent ones): trains, backprops
    BFloat16Weight  bfloat16 bits (uint16), widened exactly in registers: half the bytes
    Int8Weight      int8 with a float32 scale per output row: a quarter of the bytes
    BlockWeight     a GGUF block format (ops.Quantized), e.g. memory-mapped from the file

Each class says, and nothing else decides: its product (`forward`; `dinp`, the gradient through it frozen, read in
its own format), how siblings that read one input fuse into one product (`fuse`: q|k|v, gate|up), how it moves to a
device (`to`), and the spec the C++ decode plan reads (`spec`). Changing a layer's format is swapping its object (`convert`); every swap bumps
`generation()`, which is how fused products and decode plans know they are stale (nothing clears caches by name).
LoRA-wrapped weights are a further class of this one interface (nn/lora.py: LoRAWeight). Each also says what its product's input is
rounded to (`activations`, `with_activations`): float32, or for GGUF integer blocks int8 (llama.cpp's Q8 blocks and
integer dot products; the default is default_activations).
"""

from __future__ import annotations

import itertools

import numpy as np

from .. import ops

_F32 = np.dtype(np.float32)
_GENERATION = itertools.count(1)
_current = [0]


def changed() -> None:
    """A weight somewhere was swapped or moved: every cache built over weights is stale."""
    _current[0] = next(_GENERATION)


def generation() -> int:
    """A number that changes whenever any layer's weight object is swapped or moved (caches compare it)."""
    return _current[0]


def _ready(x, width) -> bool:
    """x needs no checking: float32, C-contiguous, last axis `width` (the weights are known-good)."""
    return type(x) is np.ndarray and x.dtype == _F32 and x.ndim >= 1 and x.shape[-1] == width and \
        x.flags.c_contiguous


class Weight:
    """The interface. shape (OC, IC); `kind` names the format; `trainable`: its Parameter takes gradients."""

    kind = "?"
    code = None       # the C++ plan's kind: -1 float32, -2 bfloat16, -3 int8, else the GGUF type id
    trainable = False

    @property
    def shape(self):
        raise NotImplementedError

    def forward(self, x, bias=None):
        """x (..., IC) -> x @ W^T + bias (..., OC), float32 sums. Inputs that are already float32,
        C-contiguous and IC wide go straight to the kernel (the decoding path makes ~150 of these calls per
        token); anything else takes the checked ops call, which names the problem."""
        return self._unchecked(x, bias) if _ready(x, self.shape[1]) else self._checked(x, bias)

    def _unchecked(self, x, bias):
        raise NotImplementedError

    def _checked(self, x, bias):
        raise NotImplementedError

    def dinp(self, dout):
        """dout (..., OC) -> dout @ W (..., IC): the gradient that flows back through a frozen weight, read in its
        own format (no float32 copy of a narrow one)."""
        raise NotImplementedError

    def backward(self, dout):
        """A frozen weight's backward while an adapter trains: the input's gradient (a LoRA weight, nn.lora, adds
        its own and accumulates its A and B gradients)."""
        return self.dinp(dout)

    @classmethod
    def fuse(cls, weights):
        """One weight of this class computing all of `weights` (of this class, one input width) side by side, or
        None when they cannot be fused (then each takes its own product)."""
        return None

    @classmethod
    def products(cls, weights, x, biases):
        """The products of one input x with all of `weights` (of this class, one input width), computed together
        where the class shares work between them, as a list; None when it does not (then each takes its own)."""
        return None

    def to(self, device: str) -> "Weight | None":
        """This weight where the model's arrays now live ("cpu" or "cuda"), or None where the format does not
        exist there (the layer then multiplies with its float32 Parameter)."""
        return self

    def spec(self):
        """(code, data, scale or None, OC, IC): what the C++ decode plan reads."""
        raise NotImplementedError

    activations = "float32"  # what the product rounds its input to (ops.ACTIVATION_DTYPES)

    def with_activations(self, dtype: str) -> "Weight":
        """This weight with its product's input rounded to dtype ("float32" | "int8"); formats whose products
        have only float32 activations stay as they are."""
        check_activations(dtype)
        return self

    def __repr__(self):
        return f"{type(self).__name__}({self.kind}, shape={self.shape})"


class Float32Weight(Weight):
    """The float32 matrix: a layer's Parameter (read through it, so a move to a device follows), or an array (a
    fused view of adjacent Parameters in the flat buffer)."""

    kind, code = "float32", -1

    def __init__(self, source):
        self.source = source
        self.trainable = not isinstance(source, (np.ndarray,)) and hasattr(source, "grad")

    @property
    def data(self):
        return self.source.data if self.trainable else self.source

    @property
    def shape(self):
        return self.data.shape

    def _unchecked(self, x, bias):
        return ops.unchecked_matmul(x, self.data, bias)

    def _checked(self, x, bias):
        return ops.matmul_forward(x, self.data, bias)

    def dinp(self, dout):
        return ops.matmul_dinp(dout, self.data)

    @classmethod
    def fuse(cls, weights):
        view = adjacent([w.data for w in weights])
        return None if view is None else cls(view.reshape(-1, weights[0].shape[1]))

    def spec(self):
        w = self.data
        return (self.code, w, None, *w.shape)


class BFloat16Weight(Weight):
    """bfloat16 bits (uint16 (OC, IC)): each value widened exactly to float32 in registers."""

    kind, code = "bfloat16", -2

    def __init__(self, bits):
        self.bits = bits

    @classmethod
    def from_float32(cls, w):
        return cls(ops.to_bfloat16(w))

    @property
    def shape(self):
        return self.bits.shape

    def _unchecked(self, x, bias):
        return ops.unchecked_matmul_bf16(x, self.bits, bias)

    def _checked(self, x, bias):
        return ops.matmul_forward(x, self.bits, bias)

    def dinp(self, dout):
        return ops.matmul_dinp(dout, self.bits)

    @classmethod
    def fuse(cls, weights):
        return cls(np.concatenate([w.bits for w in weights]))  # (a copy made once per conversion)

    def to(self, device):
        return self if device == "cpu" else None  # (a CPU format: on a GPU the float32 weights multiply)

    def spec(self):
        return (self.code, self.bits, None, *self.bits.shape)


class Int8Weight(Weight):
    """int8 (OC, IC) with a float32 scale (OC,) per output row (symmetric, ops.quantize_int8). With int8 activations
    (IC whole blocks of 32) the same int8 rows are Q8_0 blocks of scale 1, exact in fp16, through the int8 products
    (VNNI panels, AMX tiles), and the row scale multiplies their sums: (quantised x . q) scale + bias. The C++ decode
    plan keeps float32 activations for them (its int8 kind has no row scale)."""

    kind, code = "int8", -3

    def __init__(self, q, scale, activations=None):
        self.q, self.scale = q, scale
        self.activations = default_activations(self.kind) if activations is None else activations
        self.blocks = unit_q8_0(q) if self.activations == "int8" else None

    @classmethod
    def from_float32(cls, w):
        return cls(*ops.quantize_int8(w))

    @property
    def shape(self):
        return self.q.shape

    def _unchecked(self, x, bias):
        if self.blocks is None:
            return ops.unchecked_matmul_int8(x, self.q, self.scale, bias)
        return self._scaled(ops.unchecked_matmul_blocks(x, self.blocks, None, True), bias)

    def _checked(self, x, bias):
        if self.blocks is None:
            return ops.matmul_forward(x, self.q, bias, weight_scale=self.scale)
        return self._scaled(ops.matmul_forward(x, self.blocks, None, activations="int8"), bias)

    def _scaled(self, out, bias):
        out *= self.scale
        if bias is not None:
            out += bias
        return out

    def dinp(self, dout):
        return ops.matmul_dinp(dout, self.q, weight_scale=self.scale)

    def with_activations(self, dtype):
        check_activations(dtype)
        if dtype == "int8" and self.q.shape[1] % 32:
            return self  # (rows that are not whole blocks: float32 activations)
        return self if dtype == self.activations else Int8Weight(self.q, self.scale, dtype)

    @classmethod
    def fuse(cls, weights):
        if len({w.activations for w in weights}) != 1:
            return None
        return cls(np.concatenate([w.q for w in weights]), np.concatenate([w.scale for w in weights]),
                   weights[0].activations)

    def to(self, device):
        return self if device == "cpu" else None  # (a CPU format: on a GPU the float32 weights multiply)

    def spec(self):
        return (self.code, self.q, self.scale, *self.q.shape)


def unit_q8_0(q):
    """int8 rows q (OC, IC), IC a multiple of 32, as Q8_0 blocks with d = 1 (ops.Quantized)."""
    OC, IC = q.shape
    blocks = np.empty((OC, IC // 32, 34), np.uint8)
    blocks[..., :2] = np.array([1.0], np.float16).view(np.uint8)
    blocks[..., 2:] = q.reshape(OC, IC // 32, 32).view(np.uint8)
    return ops.Quantized(blocks.reshape(OC, IC // 32 * 34), "Q8_0", (OC, IC))


class BlockWeight(Weight):
    """A GGUF block format (ops.Quantized: rows of blocks, e.g. a memory-mapped slice of the file), dequantised in
    registers by the product (float32 activations), or with its input quantised to int8 blocks and integer dot
    products (int8 activations: default_activations). Fused only as a view of blocks lying back to back (never a
    copy of mapped pages). On a CUDA device the products keep float32 activations."""

    code = None
    INT8_CODE = 1000  # the C++ plan's kind for int8 activations: this + the GGUF type id (decode.h)

    def __init__(self, blocks, activations=None):
        self.blocks = blocks
        self.kind = blocks.qtype
        self.activations = default_activations(blocks.qtype) if activations is None else activations
        self.int8 = self.activations == "int8"
        self.code = blocks.code + (self.INT8_CODE if self.int8 else 0)

    @property
    def shape(self):
        return self.blocks.shape

    def _unchecked(self, x, bias):
        return ops.unchecked_matmul_blocks(x, self.blocks, bias, self.int8)

    def _checked(self, x, bias):
        return ops.matmul_forward(x, self.blocks, bias, activations=self.activations)

    def dinp(self, dout):  # (float32 activations either way: the gradient is float32)
        return ops.matmul_dinp(dout, self.blocks)

    def with_activations(self, dtype):
        check_activations(dtype)
        if dtype == "int8" and self.kind not in ops.INTEGER_QTYPES:
            return self  # (float blocks F32 / F16 / BF16: float32 activations)
        if dtype == "float32":
            ops.drop_packed(self.blocks)  # (float32 products read the file's layout: no second copy kept)
        return self if dtype == self.activations else BlockWeight(self.blocks, dtype)

    @classmethod
    def fuse(cls, weights):
        if len({(w.kind, w.activations) for w in weights}) != 1:
            return None  # (a GGUF file's Q4_K q and k with a Q6_K v: one product each)
        data = adjacent([w.blocks.data for w in weights])
        if data is None:
            return None
        data = data.reshape(-1, weights[0].blocks.data.shape[1])
        return cls(ops.Quantized(data, weights[0].kind, (data.shape[0], weights[0].shape[1])),
                   weights[0].activations)

    @classmethod
    def products(cls, weights, x, biases):
        if not all(w.int8 for w in weights):
            return None
        blocks = [w.blocks for w in weights]  # (int8 activations: the input quantised once for every weight)
        if _ready(x, weights[0].shape[1]):
            return ops.unchecked_matmul_group(x, blocks, biases)
        return ops.matmul_group_forward(x, blocks, biases)

    def to(self, device):
        moved = self.blocks.to(device)
        if moved is self.blocks:
            return self
        return BlockWeight(moved, "float32" if device != "cpu" else None)

    def spec(self):  # (int8 activations: the packed rows the products read, ops.packed_rows)
        return (self.code, self.blocks.data, ops.packed_rows(self.blocks) if self.int8 else None, *self.blocks.shape)


def check_activations(dtype) -> None:
    if dtype not in ops.ACTIVATION_DTYPES:
        raise ValueError(f"activation dtype must be one of {', '.join(map(repr, ops.ACTIVATION_DTYPES))}, got "
                         f"{dtype!r}")


def default_activations(qtype: str) -> str:
    """The one place the default is decided: int8 for GGUF integer blocks (qtype) on AVX512-VNNI (int8_dot()
    "vpdpbusd"), where the int8 products beat the float ones at every row count (bench/NOTES.md, sessions 10-13);
    float32 elsewhere (AVX2's and AVX-VNNI's row products lose to the float GEMM from a few rows) and for
    set_weight_dtype("int8") weights (qtype "int8"): the C++ decode plan runs them on float32 activations (its int8
    kind has no row scale), so the default keeps the plan and the layers' path on the same numbers. Every int8
    product gives a row the same bits whatever rows share it (one order of float operations), so a request served
    in a batch equals its run alone."""
    int8 = qtype in ops.INTEGER_QTYPES and ops.int8_dot() == "vpdpbusd"
    return "int8" if int8 else "float32"


# dtype name -> the class that converts a float32 matrix to it (set_weight_dtype)
FORMATS = {"float32": None, "bfloat16": BFloat16Weight, "int8": Int8Weight}


def check_dtype(dtype) -> None:
    if dtype not in FORMATS:
        raise ValueError(f"weight dtype must be one of {', '.join(map(repr, FORMATS))}, got {dtype!r}")


def convert(parameter, dtype: str) -> Weight:
    """The weight object of a float32 Parameter stored as `dtype` ('float32', 'bfloat16' or 'int8')."""
    check_dtype(dtype)
    return Float32Weight(parameter) if FORMATS[dtype] is None else FORMATS[dtype].from_float32(parameter.data)


def fuse(weights):
    """One weight for several of one input (q|k|v, gate|up), or None: fused only within one class."""
    first = type(weights[0])
    if any(type(w) is not first for w in weights) or len({w.shape[1] for w in weights}) != 1:
        return None
    return first.fuse(list(weights))


def products(weights, x, biases):
    """The products of one input x with several weights (unfused q, k, v; gate, up) computed together where their
    class shares work between them (GGUF blocks with int8 activations: x quantised once), else None."""
    first = type(weights[0])
    if any(type(w) is not first for w in weights) or len({w.shape[1] for w in weights}) != 1:
        return None
    return first.products(list(weights), x, list(biases))


def adjacent(arrays):
    """One array viewing the given C-contiguous arrays when they lie back to back in one buffer, else None."""
    if any(type(a) is not np.ndarray for a in arrays):
        return None
    root = arrays[0]
    while isinstance(root.base, np.ndarray):
        root = root.base
    start = arrays[0].__array_interface__["data"][0]
    cursor = start
    for a in arrays:
        if a.__array_interface__["data"][0] != cursor or a.dtype != arrays[0].dtype or not a.flags.c_contiguous:
            return None
        cursor += a.nbytes
    base = root.__array_interface__["data"][0]
    if not (base <= start and cursor <= base + root.nbytes) or not root.flags.c_contiguous:
        return None
    flat = root.reshape(-1)
    first = (start - base) // arrays[0].itemsize
    return flat[first: first + (cursor - start) // arrays[0].itemsize]
