"""The checked Python face of every kernel.

Each op has `<op>_forward` / `<op>_backward` with the same positional arguments as `pytransformer.reference`.
Inputs must be C-contiguous arrays of the right dtype (float32; int64 ids and targets; bool/uint8 masks):
nothing is converted or copied. Outputs are allocated unless passed with the keyword arguments (`out=`, ...),
in which case they are written in place. Gradient convention: input gradients (dinp, dq, ...) are
overwritten; parameter gradients (dweight, dbias, dtable) are accumulated into when passed, zero-initialised
when not. Letters: N rows, C channels, IC/OC in/out channels, V vocabulary, B batch, NH heads, T sequence,
HS head size.
"""

from __future__ import annotations

import functools
import inspect
import math
import mmap

import numpy as np

from . import _core
from .cuda import DeviceArray
from .cuda import to_device as _to_device
from .cuda import kernels as _cuda_kernels
from ._validate import F32, I64, array, finite_float, integer, key_mask_bytes, no_overlaps, output

U16, I8, I32 = np.dtype(np.uint16), np.dtype(np.int8), np.dtype(np.int32)


def _kernels(x):
    """The one place a backend is chosen: the C++ CPU core for NumPy arrays, the CUDA module (pytransformer.cuda)
    for device arrays. Mixing the two in one call is a TypeError from the kernel module's checks."""
    return _core if type(x) is not DeviceArray else _cuda_kernels()


def _writes(*written, same=()):
    """Declares the arguments an op writes (keyword outputs, or in-out arguments such as adamw's params) and the
    (output, input) pairs that may be the very same array (in-place calls). The one place aliasing is checked:
    before the op runs, each of them that the caller handed in is checked against every other argument of the call
    (ops.Quantized weights by their blocks), so a new argument can never be left out of the check."""
    def decorate(fn):
        params = inspect.signature(fn).parameters
        names, pairs = tuple(params), frozenset(same)
        assert {n for pair in pairs for n in pair} | set(written) <= set(names), fn.__name__
        always = any(params[n].kind is not inspect.Parameter.KEYWORD_ONLY for n in written)  # in-out arguments

        def check(args, kwargs):
            bound = dict(zip(names, args))
            bound.update(kwargs)
            for n, v in bound.items():
                if type(v) is Quantized:
                    bound[n] = v.data
            no_overlaps([n for n in written if bound.get(n) is not None], bound, pairs)

        @functools.wraps(fn)
        def op(*args, **kwargs):
            if always:
                check(args, kwargs)
            elif kwargs:
                for n in written:
                    if kwargs.get(n) is not None:
                        check(args, kwargs)
                        break
            return fn(*args, **kwargs)

        op.writes, op.same = written, pairs
        return op
    return decorate

# --- matmul (Linear) -----------------------------------------------------------------------------------------


@_writes("out")
def matmul_forward(inp, weight, bias=None, *, out=None, weight_scale=None, activations="float32"):
    """out (..., OC) = inp (..., IC) @ weight (OC, IC)^T + bias (OC). For inference the weight may also be
    narrow: bfloat16 bits in a uint16 array (to_bfloat16: widened exactly, half the bytes), or int8 with a float32
    weight_scale (OC,) per output row (quantize_int8: a quarter of the bytes), or a Quantized matrix in a GGUF
    block format (dequantised in registers); the sums stay float32. activations="int8" (a Quantized integer block
    type only): inp quantised per block as llama.cpp does and integer dot products (reference.matmul_q8_forward)."""
    if activations not in ACTIVATION_DTYPES:
        raise ValueError(f"activations must be one of {', '.join(ACTIVATION_DTYPES)}, got {activations!r}")
    if activations == "int8" and not (isinstance(weight, Quantized) and weight.qtype in INTEGER_QTYPES):
        got = weight.qtype if isinstance(weight, Quantized) else getattr(weight, "dtype", type(weight).__name__)
        raise ValueError(f"activations='int8' needs a Quantized weight of an integer block type, got {got}")
    if activations == "int8" and type(inp) is DeviceArray:
        raise TypeError("activations='int8' runs on the CPU; inp is on a CUDA device (its products keep float32)")
    d = {}
    kind = _weight_format(weight, weight_scale, d, inp)
    array(inp, "inp", ("...", "IC"), d)
    if bias is not None:
        array(bias, "bias", ("OC",), d)
    out = output(out, "out", inp.shape[:-1] + (d["OC"],), inp)
    args = (_rows(inp), d["IC"], d["OC"])
    if kind == "blocks" and activations == "int8":
        _core.matmul_q8_forward(out, inp, weight.data, packed_rows(weight), weight.code, bias, *args)
    elif kind == "blocks":
        _kernels(out).matmul_q_forward(out, inp, weight.data, weight.code, bias, *args)
    elif kind == "int8":
        _core.matmul_w8_forward(out, inp, weight, weight_scale, bias, *args)
    else:
        k = _kernels(out)
        (k.matmul_w16_forward if kind == "bfloat16" else k.matmul_forward)(out, inp, weight, bias, *args)
    return out


def matmul_group_forward(inp, weights, biases=None):
    """[inp (..., IC) @ w^T + b (..., OC_w) for w, b in zip(weights, biases)]: one input's products with several
    Quantized integer-block weights (attention's q, k, v; a gated feed-forward's gate and up) with int8
    activations, the input quantised once for all of them and, for 1-3 rows, one pass of the threads over every
    weight. Each output equals matmul_forward(inp, w, b, activations="int8") bit for bit."""
    weights = list(weights)
    biases = [None] * len(weights) if biases is None else list(biases)
    if not weights or len(biases) != len(weights):
        raise ValueError(f"matmul_group_forward needs one or more weights and as many biases, got {len(weights)} "
                         f"weights and {len(biases)} biases")
    if type(inp) is DeviceArray:
        raise TypeError("matmul_group_forward runs on the CPU; inp is on a CUDA device")
    d = {}
    array(inp, "inp", ("...", "IC"), d)
    for i, (w, b) in enumerate(zip(weights, biases)):
        if not (isinstance(w, Quantized) and w.qtype in INTEGER_QTYPES):
            got = w.qtype if isinstance(w, Quantized) else getattr(w, "dtype", type(w).__name__)
            raise ValueError(f"weights[{i}] must be a Quantized weight of an integer block type, got {got}")
        if w.shape[1] != d["IC"]:
            raise ValueError(f"weights[{i}] takes {w.shape[1]} inputs, inp has {d['IC']}")
        if b is not None:
            array(b, f"biases[{i}]", (w.shape[0],), {})
    return unchecked_matmul_group(inp, weights, biases)


def unchecked_matmul_group(x, blocks, biases):
    outs = [np.empty(x.shape[:-1] + (b.shape[0],), np.float32) for b in blocks]
    _core.matmul_q8_group_forward(outs, x, [b.data for b in blocks], [packed_rows(b) for b in blocks],
                                  [b.code for b in blocks], biases, _rows(x), x.shape[-1])
    return outs


def _weight_format(weight, weight_scale, d, x):
    """The one place a product's weight format is read (matmul_forward, matmul_dinp): "float32", "bfloat16" (uint16
    bits), "int8" (with weight_scale (OC,)) or "blocks" (a Quantized matrix), with its (OC, IC) checked into d. Narrow
    ndarrays are CPU formats: with x (the other operand) on a CUDA device only float32 and blocks multiply."""
    if isinstance(weight, Quantized):
        kind = "blocks"
        d["OC"], d["IC"] = weight.shape
    else:
        dtype = weight.dtype if isinstance(weight, np.ndarray) and weight.dtype in (U16, I8) else F32
        kind = {U16: "bfloat16", I8: "int8"}.get(dtype, "float32")
        if type(x) is DeviceArray and kind != "float32":
            raise TypeError(f"weight must be float32 on a CUDA device (narrow weights are CPU-only), got {dtype}")
        array(weight, "weight", ("OC", "IC"), d, dtype)
    if (kind == "int8") != (weight_scale is not None):
        raise ValueError("weight_scale (OC,) goes with an int8 weight, and only with one")
    if kind == "int8":
        array(weight_scale, "weight_scale", ("OC",), d)
    return kind


def quantize_int8(x):
    """float32 (OC, IC) -> (int8 (OC, IC), float32 scale (OC,)): symmetric per output row, scale = max |row| / 127,
    values rounded to nearest; weight ~ q * scale[:, None]. The form matmul_forward takes."""
    x = np.asarray(x, np.float32)
    scale = np.abs(x).max(axis=-1) / np.float32(127.0) if x.size else np.zeros(x.shape[:-1], np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(x / scale[..., None]), -127, 127).astype(np.int8)
    return q, scale


def to_bfloat16(x):
    """float32 values -> their nearest bfloat16 (ties to even) as uint16 bits, the form matmul_forward takes."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


@_writes("out")
def to_float16(x, *, out=None):
    """x (...) float32 -> float16 (...): each value rounded to the nearest half (ties to even) after saturating at
    +-65504, the largest half, so that a finite float stays finite (inf and NaN stay): a KV cache's rows as the
    decoding plan and write_rows store them."""
    if type(x) is DeviceArray:
        raise TypeError("to_float16 runs on the CPU (a CUDA cache holds float32)")
    array(x, "x", ("...",), {})
    out = output(out, "out", x.shape, x, np.float16)
    _core.float16_from_float(out, x, x.size)
    return out


def _rows(x):
    return math.prod(x.shape[:-1])  # (np.prod took 5 us, a quarter of a small matmul call's Python overhead)


@_writes("dinp", "dweight", "dbias")
def matmul_backward(dout, inp, weight, *, dinp=None, dweight=None, dbias=None, compute_dinp=True,
                    compute_dbias=True):
    """-> dinp (..., IC) overwritten, dweight (OC, IC) and dbias (OC) accumulated (None when not computed).
    weight may be None without dinp (dweight += dout^T inp alone does not read it: any out += a @ b in one pass)."""
    d = {}
    if weight is not None or compute_dinp:
        array(weight, "weight", ("OC", "IC"), d)
    array(inp, "inp", ("...", "IC"), d)
    array(dout, "dout", ("...", "OC"), d)
    if dout.shape[:-1] != inp.shape[:-1]:
        raise ValueError(f"dout {tuple(dout.shape)} and inp {tuple(inp.shape)} must share leading dimensions")
    dinp = output(dinp, "dinp", inp.shape, dout) if compute_dinp else None
    dweight = output(dweight, "dweight", (d["OC"], d["IC"]), dout, zero=True)
    dbias = output(dbias, "dbias", (d["OC"],), dout, zero=True) if compute_dbias else None
    _kernels(dout).matmul_backward(dinp, dweight, dbias, dout, inp, dweight if weight is None else weight,
                                   _rows(inp), d["IC"], d["OC"])  # (the kernel reads weight only for dinp)
    return dinp, dweight, dbias


# --- layernorm -----------------------------------------------------------------------------------------------


@_writes("out", "mean", "rstd", same=[("out", "inp")])
def layernorm_forward(inp, weight, bias, eps=1e-5, *, out=None, mean=None, rstd=None):
    """out (..., C) = (inp - mean) * rstd * weight + bias over the last axis -> (out, mean (N,), rstd (N,))."""
    d = {}
    array(inp, "inp", ("...", "C"), d)
    array(weight, "weight", ("C",), d)
    array(bias, "bias", ("C",), d)
    eps = finite_float(eps, "eps", 0.0, 1.0)
    N = _rows(inp)
    if d["C"] == 0:
        raise ValueError(f"inp {tuple(inp.shape)} has no channels to normalise over (C = 0)")
    out = output(out, "out", inp.shape, inp)
    mean = output(mean, "mean", (N,), inp)
    rstd = output(rstd, "rstd", (N,), inp)
    _kernels(out).layernorm_forward(out, mean, rstd, inp, weight, bias, N, d["C"], eps)
    return out, mean, rstd


@_writes("dinp", "dweight", "dbias", same=[("dinp", "dout")])
def layernorm_backward(dout, inp, weight, mean, rstd, *, dinp=None, dweight=None, dbias=None):
    """-> dinp (..., C) overwritten, dweight (C) and dbias (C) accumulated."""
    d = {}
    array(inp, "inp", ("...", "C"), d)
    array(dout, "dout", ("...", "C"), d)
    array(weight, "weight", ("C",), d)
    N = _rows(inp)
    d["N"] = N
    array(mean, "mean", ("N",), d)
    array(rstd, "rstd", ("N",), d)
    if dout.shape != inp.shape:
        raise ValueError(f"dout {tuple(dout.shape)} must have the shape of inp {tuple(inp.shape)}")
    dinp = output(dinp, "dinp", inp.shape, dout)
    dweight = output(dweight, "dweight", (d["C"],), dout, zero=True)
    dbias = output(dbias, "dbias", (d["C"],), dout, zero=True)
    _kernels(dinp).layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, d["C"])
    return dinp, dweight, dbias


# --- activations ---------------------------------------------------------------------------------------------


def _approximate(approximate):
    if approximate not in ("tanh", "none"):
        raise ValueError(f"approximate must be 'tanh' or 'none' (exact erf), got {approximate!r}")
    return approximate == "tanh"


@_writes("out", same=[("out", "inp")])
def gelu_forward(inp, approximate="tanh", *, out=None):
    """GELU, 'tanh' approximation (GPT-2) or 'none' (exact erf, BERT). Any shape; out may be inp."""
    array(inp, "inp", ("...",), {})
    tanh = _approximate(approximate)
    out = output(out, "out", inp.shape, inp)
    _kernels(out).gelu_forward(out, inp, inp.size, tanh)
    return out


@_writes("dinp", same=[("dinp", "dout"), ("dinp", "inp")])
def gelu_backward(dout, inp, approximate="tanh", *, dinp=None):
    array(inp, "inp", ("...",), {})
    _same_shape(dout, "dout", inp, "inp")
    tanh = _approximate(approximate)
    dinp = output(dinp, "dinp", inp.shape, dout)
    _kernels(dinp).gelu_backward(dinp, inp, dout, inp.size, tanh)
    return dinp


@_writes("out", same=[("out", "inp")])
def relu_forward(inp, *, out=None):
    array(inp, "inp", ("...",), {})
    out = output(out, "out", inp.shape, inp)
    _kernels(out).relu_forward(out, inp, inp.size)
    return out


@_writes("dinp", same=[("dinp", "dout"), ("dinp", "inp")])
def relu_backward(dout, inp, *, dinp=None):
    array(inp, "inp", ("...",), {})
    _same_shape(dout, "dout", inp, "inp")
    dinp = output(dinp, "dinp", inp.shape, dout)
    _kernels(dinp).relu_backward(dinp, inp, dout, inp.size)
    return dinp


@_writes("out", same=[("out", "inp")])
def tanh_forward(inp, *, out=None):
    """tanh, elementwise (BERT's pooler): NumPy on the CPU, a kernel on a CUDA device."""
    array(inp, "inp", ("...",), {})
    out = output(out, "out", inp.shape, inp)
    if type(inp) is DeviceArray:
        _cuda_kernels().tanh_forward(out, inp, inp.size)
    else:
        np.tanh(inp, out=out)
    return out


@_writes("dinp", same=[("dinp", "dout")])
def tanh_backward(dout, out, *, dinp=None):
    """dinp = dout * (1 - out^2), from tanh_forward's output."""
    array(out, "out", ("...",), {})
    _same_shape(dout, "dout", out, "out")
    dinp = output(dinp, "dinp", out.shape, dout)
    if type(out) is DeviceArray:
        _cuda_kernels().tanh_backward(dinp, out, dout, out.size)
    else:
        np.multiply(dout, np.float32(1.0) - out * out, out=dinp)
    return dinp


def _same_shape(x, name, ref, ref_name, dtype=F32):
    array(x, name, ("...",), {}, dtype)
    if x.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(x.shape)}")


# --- softmax and cross-entropy -------------------------------------------------------------------------------


@_writes("out", same=[("out", "inp")])
def softmax_forward(inp, *, out=None):
    """Softmax over the last axis of inp (..., C)."""
    d = {}
    array(inp, "inp", ("...", "C"), d)
    out = output(out, "out", inp.shape, inp)
    _kernels(out).softmax_forward(out, inp, _rows(inp), d["C"])
    return out


@_writes("dinp", same=[("dinp", "dout")])
def softmax_backward(dout, out, *, dinp=None):
    d = {}
    array(out, "out", ("...", "C"), d)
    _same_shape(dout, "dout", out, "out")
    dinp = output(dinp, "dinp", out.shape, dout)
    _kernels(dinp).softmax_backward(dinp, out, dout, _rows(out), d["C"])
    return dinp


@_writes("logits")
def mask_logits(logits, words, vocab):
    """A grammar's mask (constrained decoding) on logits (N, V), in place and returned: -inf at every token i the
    grammar refuses -- bit i % 32 of words[n, i // 32] is 0 (llguidance's bitmask: words int32 (N, ceil(vocab /
    32)), the lowest bit first) -- and at every i >= vocab (a padded head's ids past the tokenizer's, vocab <= V).
    The allowed logits are left as they are. CPU arrays."""
    d = {}
    array(logits, "logits", ("N", "V"), d)
    vocab = integer(vocab, "vocab")
    if not 0 <= vocab <= d["V"]:
        raise ValueError(f"vocab must be in [0, V={d['V']}] (the logits' width), got {vocab}")
    array(words, "words", ("N", (vocab + 31) // 32), d, I32)
    output(logits, "logits", logits.shape, logits)
    _core.mask_logits(logits, words, d["N"], d["V"], vocab)
    return logits


@_writes("losses", "lse")
def crossentropy_forward(logits, targets, ignore_index=-100, *, label_smoothing=0.0, losses=None, lse=None):
    """Mean cross-entropy of logits (N, V) against int64 targets (N,), rows with target == ignore_index left
    out (NaN when every row is) -> (loss, losses (N,), lse (N,)). label_smoothing eps: the target distribution is
    (1 - eps) onehot + eps / V (torch's label_smoothing; the 2017 paper used 0.1)."""
    d = {}
    array(logits, "logits", ("N", "V"), d)
    array(targets, "targets", ("N",), d, I64)
    ignore_index = integer(ignore_index, "ignore_index")
    losses = output(losses, "losses", (d["N"],), logits)
    lse = output(lse, "lse", (d["N"],), logits)
    eps = finite_float(label_smoothing, "label_smoothing", 0.0, 1.0)
    loss = _kernels(losses).crossentropy_forward(losses, lse, logits, targets, d["N"], d["V"], ignore_index, eps)
    return loss, losses, lse


@_writes("dlogits", same=[("dlogits", "logits")])
def crossentropy_backward(logits, targets, lse, dloss=1.0, ignore_index=-100, *, label_smoothing=0.0,
                          dlogits=None):
    """dlogits (N, V) of the mean loss times dloss; dlogits may be logits itself (in place)."""
    d = {}
    array(logits, "logits", ("N", "V"), d)
    array(targets, "targets", ("N",), d, I64)
    array(lse, "lse", ("N",), d)
    dloss = finite_float(dloss, "dloss")
    ignore_index = integer(ignore_index, "ignore_index")
    dlogits = output(dlogits, "dlogits", logits.shape, logits)
    eps = finite_float(label_smoothing, "label_smoothing", 0.0, 1.0)
    _kernels(dlogits).crossentropy_backward(dlogits, logits, lse, targets, dloss, d["N"], d["V"], ignore_index, eps)
    return dlogits


# --- embedding -----------------------------------------------------------------------------------------------


@_writes("out")
def embedding_forward(ids, table, *, out=None):
    """out (..., C) = table (V, C)[ids (...)], ids int64 in [0, V)."""
    d = {}
    array(table, "table", ("V", "C"), d)
    array(ids, "ids", ("...",), d, I64)
    out = output(out, "out", ids.shape + (d["C"],), ids)
    _kernels(out).embedding_forward(out, ids, table, ids.size, d["V"], d["C"])
    return out


@_writes("dtable")
def embedding_backward(dout, ids, V, *, dtable=None):
    """dtable (V, C) += scatter-add of dout (..., C) at ids (...); repeated ids add up."""
    d = {"V": integer(V, "V")}
    array(ids, "ids", ("...",), d, I64)
    array(dout, "dout", ("...", "C"), d)
    if dout.shape[:-1] != ids.shape:
        raise ValueError(f"dout {tuple(dout.shape)} must be ids.shape + (C,) with ids {tuple(ids.shape)}")
    dtable = output(dtable, "dtable", (d["V"], d["C"]), dout, zero=True)
    _kernels(dtable).embedding_backward(dtable, dout, ids, ids.size, d["V"], d["C"])
    return dtable


# --- residual and dropout ------------------------------------------------------------------------------------


@_writes("out", same=[("out", "a"), ("out", "b")])
def residual_forward(a, b, *, out=None):
    """out = a + b (same shapes); out may be a or b."""
    array(a, "a", ("...",), {})
    _same_shape(b, "b", a, "a")
    out = output(out, "out", a.shape, a)
    _kernels(out).residual_forward(out, a, b, a.size)
    return out


@_writes("dst")
def add_into(dst, src):
    """dst += src in place (same shapes), returned: how a backward sums two gradient streams."""
    array(dst, "dst", ("...",), {})
    _same_shape(src, "src", dst, "dst")
    output(dst, "dst", dst.shape, dst)
    _kernels(dst).residual_forward(dst, dst, src, dst.size)
    return dst


@_writes("da", "db", same=[("da", "dout"), ("db", "dout"), ("db", "da")])
def residual_backward(dout, *, da=None, db=None):
    """-> (da, db), both equal to dout."""
    array(dout, "dout", ("...",), {})
    da = output(da, "da", dout.shape, dout)
    db = output(db, "db", dout.shape, dout)
    _kernels(dout).residual_backward(da, db, dout, dout.size)
    return da, db


def _dropout_args(p, seed):
    p = finite_float(p, "p", 0.0, 1.0, hi_open=True)
    seed = integer(seed, "seed")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return p, seed


@_writes("out", same=[("out", "inp")])
def dropout_forward(inp, p, seed, *, out=None):
    """Zero each element with probability p and scale the rest by 1 / (1 - p); the mask depends on (seed,
    element index) only, so it is reproducible and the same for any thread count."""
    array(inp, "inp", ("...",), {})
    p, seed = _dropout_args(p, seed)
    out = output(out, "out", inp.shape, inp)
    _kernels(out).dropout_forward(out, inp, inp.size, p, seed)
    return out


@_writes("dinp", same=[("dinp", "dout")])
def dropout_backward(dout, p, seed, *, dinp=None):
    array(dout, "dout", ("...",), {})
    p, seed = _dropout_args(p, seed)
    dinp = output(dinp, "dinp", dout.shape, dout)
    _kernels(dinp).dropout_backward(dinp, dout, dout.size, p, seed)
    return dinp


# --- attention -----------------------------------------------------------------------------------------------


_LAYOUTS = {"bhtd": ("B", "{H}", "{T}", "HS"), "bthd": ("B", "{T}", "{H}", "HS")}


def _heads(layout, T, H="NH"):
    """The dimension names of a (B, H, T, HS) array in `layout`, T being "Tq" or "Tk", H "NH" or "NKV"."""
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be 'bhtd' (B, NH, T, HS) or 'bthd' (B, T, NH, HS), got {layout!r}")
    return tuple(n.format(T=T, H=H) for n in _LAYOUTS[layout])


def _attention_args(q, k, v, key_mask, scale, layout, causal, window, kv_len=None, kv_dtype=np.float32):
    d = {}
    window = integer(window, "window")
    if window < 0 or (window and not causal):
        raise ValueError(f"window must be 0 (none) or, with causal attention, a positive number of keys; got "
                         f"{window} (causal={bool(causal)})")
    array(q, "q", _heads(layout, "Tq"), d)
    array(k, "k", _heads(layout, "Tkv", "NKV"), d, kv_dtype)
    array(v, "v", _heads(layout, "Tkv", "NKV"), d, kv_dtype)
    if d["NKV"] == 0 or d["NH"] % d["NKV"]:
        raise ValueError(f"k and v have {d['NKV']} heads, which must divide q's {d['NH']} (grouped-query attention)")
    d["Tk"] = d["Tkv"] if kv_len is None else integer(kv_len, "kv_len")
    if not 0 <= d["Tk"] <= d["Tkv"]:
        raise ValueError(f"kv_len must be in [0, {d['Tkv']}] (the rows k and v hold), got {d['Tk']}")
    mask = key_mask_bytes(key_mask, d)
    if d["HS"] == 0:
        raise ValueError(f"q, k and v have head size HS = 0, got q {tuple(q.shape)}: a head needs at least one channel")
    scale = 1.0 / math.sqrt(d["HS"]) if scale is None else finite_float(scale, "scale")
    return d, mask, scale, 0 if window >= d["Tk"] else window  # (as wide as the keys: no window)


@_writes("out", "lse")
def attention_forward(q, k, v, causal=False, key_mask=None, scale=None, *, layout="bhtd", out=None, lse=None,
                      kv_len=None, window=0):
    """Scaled dot-product attention, fused (memory O(T), not O(T^2)).

    q (B, NH, Tq, HS), k and v (B, NKV, Tk, HS) with NKV dividing NH (grouped-query attention: query head h
    reads key/value head h // (NH / NKV), in place); causal: key j visible to query i when j <= i + Tk - Tq;
    key_mask (B, Tk) bool/uint8, 1 = attend; scale defaults to 1/sqrt(HS). window > 0 (causal only): sliding-window
    attention, key j also hidden from query i when j <= i + Tk - Tq - window (each query sees the window keys up to
    and including its own position, so never none of them).
    layout="bthd" takes q, k, v and gives out as (B, T, NH, HS) instead: a Linear's (B, T, C) output reshaped
    to heads without a copy.
    kv_len: k and v are a KV cache holding more rows per sequence than are in use; the first kv_len are the keys
    (Tk = kv_len; key_mask is then (B, kv_len)). Read in place, no copy. k and v may both be float16 NumPy arrays (a
    cache of halves, generate.KVCache): widened exactly as they are read, the same numbers as their float32 copies.
    -> out (shaped like q), lse (B, NH, Tq) (log-sum-exp, -inf for rows that see no key; their out is 0).
    """
    half = isinstance(k, np.ndarray) and k.dtype == np.float16
    d, mask, scale, window = _attention_args(q, k, v, key_mask, scale, layout, causal, window, kv_len,
                                             np.float16 if half else np.float32)
    out = output(out, "out", q.shape, q)
    lse = output(lse, "lse", (d["B"], d["NH"], d["Tq"]), q)
    _kernels(out).attention_forward(out, lse, q, k, v, mask, d["B"], d["NH"], d["NKV"], d["Tq"], d["Tk"], d["Tkv"],
                                    d["HS"], bool(causal), window, scale, layout == "bthd")
    return out, lse


@_writes("dq", "dk", "dv")
def attention_backward(dout, q, k, v, out, lse, causal=False, key_mask=None, scale=None, *, layout="bhtd",
                       dq=None, dk=None, dv=None, window=0):
    """-> dq, dk, dv (overwritten, shaped like q, k, v; a grouped key/value head sums its query heads'), from the
    forward's out and lse (and the forward's causal, key_mask, scale and window)."""
    d, mask, scale, window = _attention_args(q, k, v, key_mask, scale, layout, causal, window)
    array(out, "out", _heads(layout, "Tq"), d)
    array(dout, "dout", _heads(layout, "Tq"), d)
    array(lse, "lse", ("B", "NH", "Tq"), d)
    dq = output(dq, "dq", q.shape, dout)
    dk = output(dk, "dk", k.shape, dout)
    dv = output(dv, "dv", v.shape, dout)
    _kernels(dq).attention_backward(dq, dk, dv, dout, out, lse, q, k, v, mask, d["B"], d["NH"], d["NKV"], d["Tq"],
                                     d["Tk"], d["HS"], bool(causal), window, scale, layout == "bthd")
    return dq, dk, dv


# --- Llama parts: RMSNorm, rotary positions, SwiGLU -------------------------------------------------------------


@_writes("out", "rstd", same=[("out", "inp")])
def rmsnorm_forward(inp, weight, eps=1e-5, *, out=None, rstd=None):
    """out (..., C) = inp * rstd * weight, rstd (N,) = 1 / sqrt(mean(inp^2) + eps) over the last axis -> (out, rstd)."""
    d = {}
    array(inp, "inp", ("...", "C"), d)
    array(weight, "weight", ("C",), d)
    eps = finite_float(eps, "eps", 0.0, 1.0)
    if d["C"] == 0:
        raise ValueError(f"inp {tuple(inp.shape)} has no channels to normalise over (C = 0)")
    N = _rows(inp)
    out = output(out, "out", inp.shape, inp)
    rstd = output(rstd, "rstd", (N,), inp)
    _kernels(out).rmsnorm_forward(out, rstd, inp, weight, N, d["C"], eps)
    return out, rstd


@_writes("dinp", "dweight", same=[("dinp", "dout")])
def rmsnorm_backward(dout, inp, weight, rstd, *, dinp=None, dweight=None):
    """-> dinp (..., C) overwritten, dweight (C) accumulated."""
    d = {}
    array(inp, "inp", ("...", "C"), d)
    _same_shape(dout, "dout", inp, "inp")
    array(weight, "weight", ("C",), d)
    d["N"] = _rows(inp)
    array(rstd, "rstd", ("N",), d)
    dinp = output(dinp, "dinp", inp.shape, dout)
    dweight = output(dweight, "dweight", (d["C"],), dout, zero=True)
    _kernels(dinp).rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, d["N"], d["C"])
    return dinp, dweight


def rope_tables(positions, head_size, base=10000.0, inv_freq=None, scale=1.0):
    """(cos, sin), each float32 (positions, head_size / 2): angle p * base^(-2i / head_size), or p * inv_freq[i]
    (a scaled rotary's frequencies, (head_size / 2,)), computed in float64; both times scale (an attention factor)."""
    P, HS = integer(positions, "positions"), integer(head_size, "head_size")
    base = finite_float(base, "base", 1.0)
    if P < 0 or HS < 2 or HS % 2:
        raise ValueError(f"rope tables need positions >= 0 and an even head size >= 2, got {P}, {HS}")
    if inv_freq is None:
        inv_freq = base ** (-np.arange(0, HS, 2, dtype=np.float64) / HS)
    elif np.shape(inv_freq) != (HS // 2,):
        raise ValueError(f"inv_freq must be ({HS // 2},) for a head of {HS}, got {np.shape(inv_freq)}")
    angle = np.arange(P, dtype=np.float64)[:, None] * np.asarray(inv_freq, np.float64)
    return (scale * np.cos(angle)).astype(np.float32), (scale * np.sin(angle)).astype(np.float32)


def _rope_args(x, name, cos, sin, positions):
    d = {}
    array(x, name, ("...", "NH", "HS"), d)
    array(cos, "cos", ("P", "H2"), d)
    array(sin, "sin", ("P", "H2"), d)
    array(positions, "positions", ("...",), d, I64)
    if d["HS"] != 2 * d["H2"]:
        raise ValueError(f"cos and sin have {d['H2']} columns; a head of {d['HS']} needs {d['HS'] // 2} (and HS even)")
    if positions.shape != x.shape[:-2]:
        raise ValueError(f"positions {tuple(positions.shape)} must have the shape of {name} without its last two "
                         f"axes, {tuple(x.shape[:-2])}")
    return d, positions.size


@_writes("out", same=[("out", "inp")])
def rope_forward(inp, cos, sin, positions, *, interleaved=False, out=None):
    """Rotary positions on inp (..., NH, HS): the pairs (i, i + HS/2) of each head of row n (Hugging Face's
    rotate_half; interleaved: the pairs (2i, 2i + 1), llama.cpp's) rotated by the angles of positions[n] (int64,
    shaped inp.shape[:-2], each < len(cos)); cos, sin from rope_tables. out may be inp."""
    d, N = _rope_args(inp, "inp", cos, sin, positions)
    out = output(out, "out", inp.shape, inp)
    _kernels(out).rope_forward(out, inp, cos, sin, positions, N, d["NH"], d["HS"], d["P"], bool(interleaved))
    return out


@_writes("dinp", same=[("dinp", "dout")])
def rope_backward(dout, cos, sin, positions, *, interleaved=False, dinp=None):
    """dinp: dout rotated back (the rotation's transpose). dinp may be dout."""
    d, N = _rope_args(dout, "dout", cos, sin, positions)
    dinp = output(dinp, "dinp", dout.shape, dout)
    _kernels(dinp).rope_backward(dinp, dout, cos, sin, positions, N, d["NH"], d["HS"], d["P"], bool(interleaved))
    return dinp


def _gated(name, act):
    """The checked forward and backward of a gated feed-forward's product `name`: out = act(gate) * up."""
    @_writes("out", same=[("out", "gate"), ("out", "up")])
    def forward(gate, up, *, out=None):
        array(gate, "gate", ("...",), {})
        _same_shape(up, "up", gate, "gate")
        out = output(out, "out", gate.shape, gate)
        getattr(_kernels(out), name + "_forward")(out, gate, up, gate.size)
        return out

    @_writes("dgate", "dup", same=[("dgate", "dout"), ("dup", "dout")])
    def backward(dout, gate, up, *, dgate=None, dup=None):
        array(gate, "gate", ("...",), {})
        _same_shape(up, "up", gate, "gate")
        _same_shape(dout, "dout", gate, "gate")
        dgate = output(dgate, "dgate", gate.shape, dout)
        dup = output(dup, "dup", gate.shape, dout)
        getattr(_kernels(dout), name + "_backward")(dgate, dup, dout, gate, up, gate.size)
        return dgate, dup

    forward.__name__ = forward.__qualname__ = name + "_forward"
    backward.__name__ = backward.__qualname__ = name + "_backward"
    forward.__doc__ = f"out = {act}(gate) * up, elementwise; out may be gate or up."
    backward.__doc__ = "-> (dgate, dup), both overwritten; either may be dout."
    return forward, backward


swiglu_forward, swiglu_backward = _gated("swiglu", "silu")      # Llama's gated feed-forward
geglu_forward, geglu_backward = _gated("geglu", "gelu_tanh")    # Gemma's


# --- GGUF block-quantised weights (inference) ----------------------------------------------------------------

# the GGUF (ggml) tensor types the kernels read, by name -> ggml type id (cpp/include/pytransformer/kernels.h)
QTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11,
          "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "IQ4_NL": 20, "IQ4_XS": 23, "BF16": 30}
QTYPE_NAMES = {v: k for k, v in QTYPES.items()}
INTEGER_QTYPES = tuple(k for k in QTYPES if k not in ("F32", "F16", "BF16"))  # GGUF integer blocks
ACTIVATION_DTYPES = ("float32", "int8")  # what a quantised product's input is rounded to


def int8_dot() -> str:
    """The integer dot product int8-activation products run here: vpdpbusd (AVX512-VNNI: 16-output panels from 4
    rows), vpdpbusd-ymm (AVX-VNNI: row products only), vpmaddubsw (AVX2) or scalar."""
    return _core.int8_dot()


class Quantized:
    """A (rows, cols) matrix kept in a GGUF block format: data is uint8 (rows, row_bytes), e.g. a memory-mapped
    slice of the file; qtype a name in QTYPES. matmul_forward takes it as a weight; dequantize widens rows."""

    __slots__ = ("data", "qtype", "code", "shape", "_packed")

    def __init__(self, data, qtype, shape):
        if qtype not in QTYPES:
            raise ValueError(f"unsupported tensor type {qtype!r} (supported: {', '.join(QTYPES)})")
        rows, cols = (integer(n, "shape") for n in shape)
        code = QTYPES[qtype]
        rb = _core.quant_row_bytes(code, cols)
        if rb < 0:
            raise ValueError(f"a {qtype} row of {cols} values is not a whole number of blocks")
        array(data, "data", ("rows", "row_bytes"), {"rows": rows, "row_bytes": rb}, np.dtype(np.uint8))
        self.data, self.qtype, self.code, self.shape = data, qtype, code, (rows, cols)
        self._packed = None  # (packed_rows: not yet asked; False: this weight's products read data)

    @property
    def nbytes(self):
        return self.data.nbytes

    def to(self, device):
        """The same blocks on "cuda" (a DeviceArray) or "cpu" (NumPy): the products read them where they are."""
        from .cuda import to_device, to_host

        data = to_device(self.data) if device == "cuda" else to_host(self.data)
        return self if data is self.data else Quantized(data, self.qtype, self.shape)

    def __repr__(self):
        return f"Quantized({self.qtype}, shape={self.shape})"


def packed_rows(weight: Quantized):
    """weight's rows as this CPU's int8 products read them fastest, or None where they read `data` itself: on
    AVX512-VNNI (int8_dot() "vpdpbusd") weights of the 32-value types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL),
    Q4_K, Q5_K and Q6_K in whole runs of 16 rows are packed -- each block's fields for 16 rows side by side
    (cpp/include/pytransformer/packed.h), as many bytes as data -- once, at the first int8 product, and kept on the
    weight beside data (which dequantize, the float32-activation products and the gradient read). The products give
    the same bits either way. Where data maps a file (a GGUF file's tensor), its pages are then handed back to the OS
    (they come back from the page cache if read again): the process holds one copy of the weight, not two."""
    packed = weight._packed
    if packed is None:
        packed = False
        if type(weight.data) is np.ndarray and _core.can_pack(weight.code, weight.shape[0]) and \
                int8_dot() == "vpdpbusd":
            packed = np.empty(weight.data.shape, np.uint8)
            step = max(16, (8 << 20) // max(1, weight.data.shape[1]) // 16 * 16)  # (runs of ~8 MiB: the mapped
            for i in range(0, weight.shape[0], step):                          # pages go as the copy grows)
                _core.pack_rows(packed[i:i + step], weight.data[i:i + step], weight.code,
                                min(step, weight.shape[0] - i), weight.shape[1])
                release_mapped(weight.data[i:i + step])
        weight._packed = packed
    return None if packed is False else packed


def drop_packed(weight: Quantized) -> None:
    """Free weight's packed rows (its products now read float32 activations and data); the next int8 product packs
    them again."""
    weight._packed = None


def release_mapped(a: np.ndarray) -> None:
    """Tell the OS this process is done for now with the whole pages of array a where a views a file mapping
    (np.frombuffer over an mmap.mmap, as GGUF tensors are): they stop counting in its resident memory, and a later
    read maps them again from the page cache. Nothing for any other memory (whose pages MADV_DONTNEED would zero)."""
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    view = root.base
    if not (isinstance(view, memoryview) and isinstance(view.obj, mmap.mmap)) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    if view.obj.closed or not len(view.obj):
        return
    whole = np.frombuffer(memoryview(view.obj), np.uint8, 1)  # (the mapping's start)
    start = a.__array_interface__["data"][0] - whole.__array_interface__["data"][0]
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # (whole pages inside a only)
    end = (start + a.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    del whole
    if end > first:
        view.obj.madvise(mmap.MADV_DONTNEED, first, end - first)


@_writes("out")
def dequantize(weight: Quantized, ids=None, *, out=None):
    """float32 rows of a Quantized matrix: all (rows, cols), or those at int64 ids (...) -> (..., cols)."""
    rows, C = weight.shape
    if ids is None:
        out = output(out, "out", (rows, C), weight.data)
        _kernels(out).dequantize_rows(out, weight.data, weight.code, None, rows, rows, C)
        return out
    array(ids, "ids", ("...",), {}, I64)
    out = output(out, "out", ids.shape + (C,), weight.data)
    _kernels(out).dequantize_rows(out, weight.data, weight.code, ids, rows, ids.size, C)
    return out


# --- search: the first passes over sign bits and int8 rows ------------------------------------------------------

U64 = np.dtype(np.uint64)
MAX_SIGN_WORDS = 1024  # words of sign bits per row a scan takes (65,536 dimensions: the binding's bound)


def _scan_args(rows, name, spec, width, dtype, queries, n, d, most, unit):
    """The checks both first passes make: rows of dtype with dimensions spec bound into d, the one a query shares
    (`width`) at most `most`; queries (Q, width) or (width,) of dtype; n >= 1 -> (queries as (Q, width), whether one
    query came, n)."""
    array(rows, name, spec, d, dtype)
    single = isinstance(queries, np.ndarray) and queries.ndim == 1
    array(queries, "queries", (width,) if single else ("Q", width), d, dtype)
    n = integer(n, "n")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if d[width] > most:
        raise ValueError(f"{name} must have at most {most} {unit}, got {width}={d[width]}")
    return queries.reshape(-1, d[width]), single, n


def hamming_candidates_forward(signs, queries, n):
    """signs (W, N) uint64 (search.pack_signs: word w of every row side by side), queries (Q, W) or (W,) uint64 ->
    for each query the ids (int64, ascending) of every row within the Hamming distance of its n-th nearest row:
    min(n, N) of them or more (every tie at that distance). A list of Q arrays (one array for a (W,) query). One
    fused read of the rows (xor, popcount, the sum over words, a running selection per thread), read in place (a
    memory map stays one); reference.hamming_candidates_forward is the spec."""
    d = {}
    q, single, n = _scan_args(signs, "signs", ("W", "N"), "W", U64, queries, n, d, MAX_SIGN_WORDS, "words per row")
    counts = np.empty(q.shape[0], np.int64)
    capacity = min(d["N"], 2 * n + 64)  # (more only where ties crowd the n-th distance: then once more, with room)
    while True:
        ids = np.empty((q.shape[0], capacity), np.int64)
        _core.hamming_candidates_forward(ids, counts, signs, q, d["N"], d["W"], q.shape[0], n, capacity)
        if counts.max(initial=0) <= capacity:
            break
        capacity = int(counts.max())
    found = [ids[i, :c] for i, c in enumerate(counts)]
    return found[0] if single else found


MAX_INT8_DIMS = 65536  # dimensions of an int8 row a scan takes (its integer sums stay within int32: the binding's)


def int8_candidates_forward(codes, scale, queries, n):
    """codes (N, D) int8 with scale (N,) float32 per row (quantize_int8), queries (Q, D) or (D,) int8 -> ids
    (Q, k) or (k,), k = min(n, N): for each query the k rows of highest float32(codes[r] . query) * scale[r] (the
    integer dot product exact; a NaN score ranks last; equal scores: the lower id first), ascending. One fused read
    of the rows (integer products, scores, a heap per thread), read in place; reference.int8_candidates_forward."""
    d = {}
    q, single, n = _scan_args(codes, "codes", ("N", "D"), "D", I8, queries, n, d, MAX_INT8_DIMS, "dimensions")
    array(scale, "scale", ("N",), d)
    ids = np.empty((q.shape[0], min(n, d["N"])), np.int64)
    _core.int8_candidates_forward(ids, codes, scale, q, d["N"], d["D"], q.shape[0], ids.shape[1])
    return ids[0] if single else ids


def popcount() -> str:
    """The bit count hamming_candidates_forward runs here: vpopcntq (AVX512-VPOPCNTDQ), vpshufb or scalar."""
    return _core.popcount()


# --- optimizer -----------------------------------------------------------------------------------------------


@_writes("params", "m", "v")
def adamw_step(params, m, v, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, step=1):
    """One torch.optim.AdamW step over flat float32 buffers: params, m and v (the state, first as in the kernel)
    are updated in place from grads."""
    d = {}
    array(params, "params", ("...",), d)
    for name, x in (("grads", grads), ("m", m), ("v", v)):
        _same_shape(x, name, params, "params")
    output(params, "params", params.shape, params)
    output(m, "m", params.shape, params)
    output(v, "v", params.shape, params)
    step = integer(step, "step")
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    _kernels(params).adamw_step(params, m, v, grads, params.size, finite_float(lr, "lr"), finite_float(beta1, "beta1", 0, 1, True),
                     finite_float(beta2, "beta2", 0, 1, True), finite_float(eps, "eps"),
                     finite_float(weight_decay, "weight_decay"), step)
    return params, m, v


@_writes("x")
def scale_(x, factor):
    """x *= factor in place (float32), returned: gradient clipping's rescale, on either device."""
    array(x, "x", ("...",), {})
    output(x, "x", x.shape, x)
    factor = finite_float(factor, "factor")
    if type(x) is DeviceArray:
        _cuda_kernels().scale_inplace(x, x.size, factor)
    else:
        x *= np.float32(factor)
    return x


def sum_squares(x):
    """Sum of squares of a float32 array, accumulated in double."""
    array(x, "x", ("...",), {})
    return float(_kernels(x).sum_squares(x, x.size))


def global_norm(x):
    """L2 norm of a flat gradient buffer (for clipping)."""
    return math.sqrt(sum_squares(x))


@_writes("dinp")
def matmul_dinp(dout, weight, *, dinp=None, weight_scale=None):
    """dinp (..., IC) = dout (..., OC) @ weight (OC, IC), overwritten: the gradient through a frozen weight (no
    dweight), in any form matmul_forward takes -- float32, bfloat16 bits, int8 with its weight_scale (OC,), or a
    Quantized matrix -- kept as it is (narrow forms widened a row segment at a time, float32 sums; CPU only)."""
    d = {}
    kind = _weight_format(weight, weight_scale, d, dout)
    array(dout, "dout", ("...", "OC"), d)
    if kind == "blocks" and type(dout) is DeviceArray:
        raise TypeError("matmul_dinp through a Quantized weight runs on the CPU; dout is on a CUDA device")
    dinp = output(dinp, "dinp", dout.shape[:-1] + (d["IC"],), dout)
    args = (_rows(dout), d["IC"], d["OC"])
    if kind == "float32":  # (the kernel reads inp only for dweight, which is not asked for: dinp stands in for it)
        _kernels(dout).matmul_backward(dinp, None, None, dout, dinp, weight, *args)
    elif kind == "int8":
        _core.matmul_w8_dinp(dinp, dout, weight, weight_scale, *args)
    else:  # (bfloat16 bits are GGUF BF16 rows)
        blocks = weight if kind == "blocks" else Quantized(weight.view(np.uint8), "BF16", weight.shape)
        _core.matmul_q_dinp(dinp, dout, blocks.data, blocks.code, *args)
    return dinp


# --- unchecked hot-path entries ------------------------------------------------------------------------------
# For a layer's own known-good arrays on the decoding path (~150 calls a token, where the checks above would cost
# as much as the work): the caller guarantees a float32 C-contiguous input x (..., IC) on the CPU and a weight of
# that input width. The bindings still check every size against the arrays. Outputs are allocated.


def _product(kernel, x, OC, *args):
    IC = x.shape[-1]
    out = np.empty(x.shape[:-1] + (OC,), np.float32)
    kernel(out, x, *args, x.size // IC if IC else _rows(x), IC, OC)
    return out


def unchecked_matmul(x, weight, bias=None):
    return _product(_core.matmul_forward, x, weight.shape[0], weight, bias)


def unchecked_matmul_bf16(x, bits, bias=None):
    return _product(_core.matmul_w16_forward, x, bits.shape[0], bits, bias)


def unchecked_matmul_int8(x, q, scale, bias=None):
    return _product(_core.matmul_w8_forward, x, q.shape[0], q, scale, bias)


def unchecked_matmul_blocks(x, blocks, bias=None, int8=False):
    if int8:
        return _product(_core.matmul_q8_forward, x, blocks.shape[0], blocks.data, packed_rows(blocks), blocks.code,
                        bias)
    return _product(_core.matmul_q_forward, x, blocks.shape[0], blocks.data, blocks.code, bias)


def unchecked_residual(a, b):
    out = np.empty(a.shape, np.float32)
    _core.residual_forward(out, a, b, a.size)
    return out


def unchecked_layernorm(x, weight, bias, eps):
    """-> (out, mean, rstd) over the last axis."""
    C = x.shape[-1]
    rows = x.size // C
    out, mean, rstd = np.empty(x.shape, np.float32), np.empty(rows, np.float32), np.empty(rows, np.float32)
    _core.layernorm_forward(out, mean, rstd, x, weight, bias, rows, C, eps)
    return out, mean, rstd


def unchecked_rmsnorm(x, weight, eps):
    """-> (out, rstd) over the last axis."""
    C = x.shape[-1]
    rows = x.size // C
    out, rstd = np.empty(x.shape, np.float32), np.empty(rows, np.float32)
    _core.rmsnorm_forward(out, rstd, x, weight, rows, C, eps)
    return out, rstd


def unchecked_swiglu(gate, up):
    out = np.empty(gate.shape, np.float32)
    _core.swiglu_forward(out, gate, up, gate.size)
    return out


def unchecked_rope(out, x, cos, sin, positions, interleaved):
    """x (N, H, HS) rows rotated into out (may be x) at int64 positions (N,) (each < cos.shape[0])."""
    N, H, HS = positions.size, x.shape[-2], x.shape[-1]
    _core.rope_forward(out, x, cos, sin, positions, N, H, HS, cos.shape[0], interleaved)
    return out


def small_batch_rows() -> int:
    """Rows a batched product takes in one pass (kernels.h kSmallBatchRows): a decode step of more rows costs
    about twice as much."""
    return int(_core.small_batch_rows)


def decode_plan(description: dict, layers: list, final_norm: tuple, head: tuple):
    """The C++ decoding step of a decoder (cpp/decode.h), over the arrays these name (kept alive by the plan):
    description {C, NH, NKV, HS, F, V, eps, attn_scale, layernorm, rotary, interleaved, gated, activation, and
    optionally norm_offset, sandwich, qk_norm, rotary_tables}; per layer {attn_norm, qkv, o, ffn_norm, up, down, and
    post_attn_norm, post_ffn_norm when sandwich, q_norm, k_norm when qk_norm, optionally window and rotary_table},
    norms (weight, bias or None), products a list of weight specs (nn.weights Weight.spec() + (bias or None,)).
    plan.step(x, logits, slots, positions, k, v, cos, sin, logit_rows, local_cos, local_sin)."""
    return _core.DecodePlan(description, layers, final_norm, head)


# --- arrays where the model lives ----------------------------------------------------------------------------
# The few array operations layers, models, the optimizer and generation need beyond the kernels, for NumPy arrays
# and CUDA device arrays alike: the one place above the kernels that knows a device exists.


def device_of(x) -> str:
    """"cuda" for a device array, "cpu" for anything else."""
    return "cuda" if type(x) is DeviceArray else "cpu"


def like(a, x, dtype=None):
    """The array a where x lives: a NumPy a (made C-contiguous of `dtype` when given) copied to x's device, or a
    device a copied back to the host; as is when it already lives there."""
    if type(a) is DeviceArray:
        return a if type(x) is DeviceArray else a.numpy()
    a = np.ascontiguousarray(a, dtype) if dtype is not None else a
    return _to_device(np.ascontiguousarray(a)) if type(x) is DeviceArray else a


def move(a, device: str):
    """The array a on "cpu" (NumPy) or "cuda" (a device array)."""
    return _to_device(a) if device == "cuda" else to_host(a)


def to_host(a):
    """A NumPy array of a (a copy of a device array; anything else as is)."""
    return a.numpy() if type(a) is DeviceArray else a


def zeros(shape, device="cpu", dtype=np.float32):
    return DeviceArray.zeros(tuple(shape), dtype) if device == "cuda" else np.zeros(shape, dtype)


def zeros_like(a):
    return zeros(a.shape, device_of(a), a.dtype)


def empty(shape, like_array=None, dtype=np.float32):
    """An uninitialised array where like_array lives (the host when None)."""
    return DeviceArray.empty(tuple(shape), dtype) if type(like_array) is DeviceArray else np.empty(shape, dtype)


def zero_(a):
    """a = 0, in place."""
    if type(a) is DeviceArray:
        a.fill_zero()
    else:
        a.fill(0.0)
    return a


def copy_into(dst, src):
    """dst[...] = src, in place (src from either side)."""
    if type(dst) is DeviceArray:
        dst.copy_from(src)
    else:
        dst[...] = to_host(src)
    return dst


def contiguous(a):
    """a as a C-contiguous array (device arrays always are)."""
    return a if type(a) is DeviceArray else np.ascontiguousarray(a)


def write_rows(cache, start, rows):
    """cache (B, T_max, ...)[:, start:start + T] = rows (B, T, ...), in place, on either side. A float16 cache
    takes the rows rounded to the nearest half, saturated at +-65504 (the decoding plan's own writes, bit for bit)."""
    end = start + rows.shape[1]
    if type(cache) is DeviceArray:
        for b in range(cache.shape[0]):
            cache[b][start:end].copy_from(rows[b])
    elif cache.dtype == np.float16:
        for b in range(cache.shape[0]):
            to_float16(np.ascontiguousarray(rows[b], np.float32), out=cache[b, start:end])
    else:
        cache[:, start:end] = rows


def prepend_row(row, x):
    """row (C,) before each sequence of x (B, N, C) -> (B, 1 + N, C), where x lives (ViT's class token)."""
    B, N, C = x.shape
    if type(x) is not DeviceArray:
        return np.ascontiguousarray(np.concatenate([np.broadcast_to(row.reshape(1, 1, C), (B, 1, C)), x], axis=1))
    out = DeviceArray.empty((B, 1 + N, C))
    for b in range(B):
        out[b][:1].copy_from(row.reshape(1, C))
        out[b][1:].copy_from(x[b])
    return out


def split_first_row(dout, dfirst):
    """dout (B, 1 + N, C) -> its rows after the first (B, N, C), C-contiguous; the first rows summed over the
    batch are added into dfirst (C,) (prepend_row's backward)."""
    B, N1, C = dout.shape
    if type(dout) is not DeviceArray:
        dfirst += dout[:, 0].sum(axis=0)
        return np.ascontiguousarray(dout[:, 1:])
    rest = DeviceArray.empty((B, N1 - 1, C))
    for b in range(B):
        rest[b].copy_from(dout[b][1:])
    firsts = embedding_forward(_to_device(np.arange(B, dtype=np.int64) * N1), dout.reshape(B * N1, C))
    embedding_backward(firsts, _to_device(np.zeros(B, np.int64)), 1, dtable=dfirst.reshape(1, C))  # (in order)
    return rest


def check_device(device: str) -> None:
    """Raise unless arrays can live on `device` ("cpu", or "cuda" with a CUDA module and a device)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        _cuda_kernels()
