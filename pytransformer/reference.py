"""The executable specification: every op's forward and backward in plain NumPy float64.

Same names and positional arguments as `pytransformer.ops`, returning fresh arrays (gradients are returned,
not accumulated). Slow and obvious on purpose: tests check the C++ kernels against these, and these against
central finite differences.
"""

from __future__ import annotations

import math

import numpy as np

# --- matmul (Linear): out (N, OC) = inp (N, IC) @ weight (OC, IC)^T + bias (OC) -----------------------------


def from_bfloat16(bits):
    """uint16 bfloat16 bits -> float64 (exact)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def widened(weight, weight_scale=None):
    """A weight in any form ops.matmul_forward takes but blocks (reference.dequantize widens those) -> float64
    (OC, IC): float as it is, bfloat16 bits (uint16) exactly, int8 times weight_scale (OC,) per row."""
    if np.asarray(weight).dtype == np.uint16:
        return from_bfloat16(weight)
    if np.asarray(weight).dtype == np.int8:
        return np.asarray(weight, np.float64) * np.asarray(weight_scale, np.float64)[:, None]
    return np.asarray(weight, np.float64)


def matmul_forward(inp, weight, bias=None, weight_scale=None):
    """Narrow weights as ops.matmul_forward takes them: bfloat16 bits (uint16), or int8 times weight_scale."""
    out = np.asarray(inp, np.float64) @ widened(weight, weight_scale).T
    return out if bias is None else out + bias


def matmul_backward(dout, inp, weight):
    """-> dinp (.., IC), dweight (OC, IC), dbias (OC)."""
    dout = np.asarray(dout, np.float64)
    rows = int(np.prod(inp.shape[:-1]))  # (not -1: a reshape cannot infer it when a size is 0)
    inp2 = np.asarray(inp, np.float64).reshape(rows, inp.shape[-1])
    dout2 = dout.reshape(rows, dout.shape[-1])
    return dout @ np.asarray(weight, np.float64), dout2.T @ inp2, dout2.sum(0)


def matmul_dinp(dout, weight, weight_scale=None):
    """dinp (..., IC) = dout (..., OC) @ weight (OC, IC): the gradient through a frozen weight, narrow forms widened
    as matmul_forward widens them (GGUF blocks: pass dequantize(data, qtype, IC))."""
    return np.asarray(dout, np.float64) @ widened(weight, weight_scale)


def round_bfloat16(x):
    """x rounded to the nearest bfloat16 (ties to even), returned as float64: what the "bfloat16" matmul
    precision does to both inputs of a product before multiplying them exactly and summing in float32."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


# --- layernorm over the last axis ----------------------------------------------------------------------------


def layernorm_forward(inp, weight, bias, eps=1e-5):
    """-> out (.., C), mean (N,), rstd (N,) with N the product of the leading dimensions."""
    x = np.asarray(inp, np.float64)
    mean = x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    out = (x - mean) * rstd * weight + bias
    return out, mean.reshape(-1), rstd.reshape(-1)


def layernorm_backward(dout, inp, weight, mean, rstd):
    """-> dinp, dweight (C), dbias (C)."""
    C = inp.shape[-1]
    x = np.asarray(inp, np.float64).reshape(-1, C)
    g = np.asarray(dout, np.float64).reshape(-1, C)
    norm = (x - mean[:, None]) * rstd[:, None]
    dnorm = g * weight
    dinp = rstd[:, None] * (dnorm - dnorm.mean(-1, keepdims=True) - norm * (dnorm * norm).mean(-1, keepdims=True))
    return dinp.reshape(inp.shape), (g * norm).sum(0), g.sum(0)


# --- activations ---------------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def gelu_forward(inp, approximate="tanh"):
    """approximate='tanh' (GPT-2) or 'none' (exact erf, BERT)."""
    x = np.asarray(inp, np.float64)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_backward(dout, inp, approximate="tanh"):
    x = np.asarray(inp, np.float64)
    if approximate == "tanh":
        u = _SQRT_2_OVER_PI * (x + 0.044715 * x**3)
        t = np.tanh(u)
        du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x**2)
        grad = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
    else:
        grad = 0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dout * grad


def relu_forward(inp):
    return np.maximum(np.asarray(inp, np.float64), 0.0)


def relu_backward(dout, inp):
    return np.where(np.asarray(inp) > 0, np.asarray(dout, np.float64), 0.0)


# --- softmax and cross-entropy -------------------------------------------------------------------------------


def softmax_forward(inp):
    x = np.asarray(inp, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def softmax_backward(dout, out):
    g = np.asarray(dout, np.float64)
    return out * (g - (g * out).sum(-1, keepdims=True))


def mask_logits(logits, words, vocab):
    """logits (N, V) with -inf at token i where bit i % 32 of words (N, ceil(vocab / 32)) [n, i // 32] is 0, and at
    every i >= vocab."""
    x = np.asarray(logits, np.float64)
    bits = (np.asarray(words).astype(np.uint32)[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1  # (N, NW, 32)
    allowed = np.zeros(x.shape, bool)
    allowed[:, :vocab] = bits.reshape(x.shape[0], -1)[:, :vocab] == 1
    return np.where(allowed, x, -np.inf)


def crossentropy_forward(logits, targets, ignore_index=-100, label_smoothing=0.0):
    """Mean over rows whose target != ignore_index of -sum_j q_j log softmax(x)_j with the target distribution
    q = (1 - eps) onehot + eps / V (eps = label_smoothing). -> loss, losses (N,), lse (N,)."""
    x = np.asarray(logits, np.float64)
    m = x.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[:, 0]
    valid = targets != ignore_index
    safe = np.where(valid, targets, 0)
    eps = label_smoothing
    per_row = lse - (1 - eps) * x[np.arange(len(x)), safe] - eps * x.mean(-1) if len(x) else lse
    losses = np.where(valid, per_row, 0.0)
    lse = np.where(valid, lse, 0.0)
    loss = losses.sum() / valid.sum() if valid.any() else float("nan")
    return loss, losses, lse


def crossentropy_backward(logits, targets, lse, dloss=1.0, ignore_index=-100, label_smoothing=0.0):
    """dlogits (N, V) of the mean loss times dloss, from the forward's lse; ignored rows get 0."""
    x = np.asarray(logits, np.float64)
    valid = targets != ignore_index
    count = valid.sum()
    eps = label_smoothing
    grad = np.exp(x - np.asarray(lse, np.float64)[:, None]) - eps / max(x.shape[-1], 1)
    grad[np.arange(len(x))[valid], targets[valid]] -= 1.0 - eps
    grad[~valid] = 0.0
    return grad * (dloss / count if count else 0.0)


# --- embedding -----------------------------------------------------------------------------------------------


def embedding_forward(ids, table):
    return np.asarray(table, np.float64)[ids]


def embedding_backward(dout, ids, V):
    """-> dtable (V, C): repeated ids add up."""
    C = dout.shape[-1]
    dtable = np.zeros((V, C))
    np.add.at(dtable, np.asarray(ids).reshape(-1), np.asarray(dout, np.float64).reshape(-1, C))
    return dtable


# --- residual and dropout ------------------------------------------------------------------------------------


def residual_forward(a, b):
    return np.asarray(a, np.float64) + b


def residual_backward(dout):
    """-> da, db."""
    return np.array(dout, np.float64), np.array(dout, np.float64)


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def dropout_mask(n, p, seed):
    """Keep-mask of n elements: the same counter-based hash (splitmix64 finaliser) as the kernel."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) * np.uint64(0xD1B54A32D192ED03) + np.arange(n, dtype=np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u24 = (z >> np.uint64(40)).astype(np.uint32)
    return u24 >= np.uint32(int(np.float64(np.float32(p)) * 16777216.0))


def dropout_forward(inp, p, seed):
    keep = dropout_mask(inp.size, p, seed).reshape(inp.shape)
    return np.where(keep, np.asarray(inp, np.float64) / (1.0 - np.float64(np.float32(p))), 0.0)


def dropout_backward(dout, p, seed):
    return dropout_forward(dout, p, seed)


# --- attention -----------------------------------------------------------------------------------------------


def attention_visible(Tq, Tk, causal=False, key_mask=None, window=0):
    """(B or 1, 1, Tq, Tk) bool: key j visible to query i (causal: j <= i + Tk - Tq; window > 0 also
    j > i + Tk - Tq - window, transformers' sliding window; key_mask (B, Tk))."""
    vis = np.ones((1, 1, Tq, Tk), bool)
    position = np.arange(Tq)[:, None] + (Tk - Tq)  # each query's position among the keys
    if causal:
        vis = vis & (np.arange(Tk)[None, :] <= position)
    if window:
        vis = vis & (np.arange(Tk)[None, :] > position - window)
    if key_mask is not None:
        vis = vis & np.asarray(key_mask, bool)[:, None, None, :]
    return vis


def _masked_scores(q, k, causal, key_mask, scale, window):
    HS = q.shape[-1]
    scale = 1.0 / math.sqrt(HS) if scale is None else scale
    s = np.asarray(q, np.float64) @ np.swapaxes(np.asarray(k, np.float64), -1, -2) * scale
    visible = np.broadcast_to(attention_visible(q.shape[2], k.shape[2], causal, key_mask, window), s.shape)
    return np.where(visible, s, -np.inf), visible


def _masked_softmax(s, visible):
    """-> p, lse over the last axis. A row that sees no key (masked, or no key at all) gives p = 0 and lse = -inf
    whatever its scores; a row whose visible scores hold NaN or +inf, or are all -inf, gives NaN (NaN in, NaN out,
    as the kernels do)."""
    sees = visible.any(-1, keepdims=True)
    m = np.where(visible, s, -np.inf).max(-1, keepdims=True, initial=-np.inf)  # (a NaN score: m is NaN)
    with np.errstate(invalid="ignore"):  # (inf - inf: the row is NaN, as it should be)
        e = np.where(visible, np.exp(s - np.where(sees, m, 0.0)), 0.0)
    denom = e.sum(-1, keepdims=True)
    p = np.where(sees, e / np.where(sees, denom, 1.0), 0.0)
    lse = np.where(sees, m + np.log(np.where(sees, denom, 1.0)), -np.inf)[..., 0]
    return p, lse


def _visible_product(p, visible, v):
    """p (..., Tq, Tk) @ v (..., Tk, HS) over the visible keys only: a hidden key's value never reaches a query (a
    NaN there stays out), a visible one's NaN or inf does."""
    finite = np.isfinite(v)
    out = p @ np.where(finite, v, 0.0)
    reached = (visible.astype(np.float64) @ (~finite).astype(np.float64)) > 0  # (..., Tq, HS)
    return np.where(reached, np.nan, out)


def _grouped(kv, NH):
    """(B, NKV, T, HS) -> (B, NH, T, HS): key/value head g repeated for query heads g * NH/NKV .. (g+1) * NH/NKV."""
    return np.repeat(np.asarray(kv, np.float64), NH // kv.shape[1], axis=1)


def attention_forward(q, k, v, causal=False, key_mask=None, scale=None, window=0):
    """q (B, NH, Tq, HS), k, v (B, NKV, Tk, HS) -> out (B, NH, Tq, HS), lse (B, NH, Tq). Dense, O(Tq * Tk)."""
    k, v = _grouped(k, q.shape[1]), _grouped(v, q.shape[1])
    s, visible = _masked_scores(q, k, causal, key_mask, scale, window)
    p, lse = _masked_softmax(s, visible)
    return _visible_product(p, visible, v), lse


def attention_probs(q, k, causal=False, key_mask=None, scale=None, window=0):
    """The softmax weights (B, NH, Tq, Tk); rows with no visible key are 0."""
    return _masked_softmax(*_masked_scores(q, k, causal, key_mask, scale, window))[0]


def attention_backward(dout, q, k, v, out, lse, causal=False, key_mask=None, scale=None, window=0):
    """-> dq, dk, dv, recomputing the probabilities from the forward's lse as the kernel does."""
    HS, NH, NKV = q.shape[-1], q.shape[1], k.shape[1]
    scale = 1.0 / math.sqrt(HS) if scale is None else scale
    k, v = _grouped(k, NH), _grouped(v, NH)
    q, dout, out = (np.asarray(a, np.float64) for a in (q, dout, out))
    s, _ = _masked_scores(q, k, causal, key_mask, scale, window)
    lse = np.asarray(lse, np.float64)[..., None]
    p = np.where(np.isfinite(s) & np.isfinite(lse), np.exp(s - np.where(np.isfinite(lse), lse, 0.0)), 0.0)
    dv = np.swapaxes(p, -1, -2) @ dout
    dp = dout @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dout * out).sum(-1, keepdims=True)) * scale
    dk = np.swapaxes(ds, -1, -2) @ q

    def summed(g):  # a grouped head's gradient: the sum over its query heads
        B, _, T, _ = g.shape
        return g.reshape(B, NKV, NH // NKV, T, HS).sum(axis=2)
    return ds @ k, summed(dk), summed(dv)


# --- Llama parts ---------------------------------------------------------------------------------------------


def rmsnorm_forward(inp, weight, eps=1e-5):
    """-> out = inp * rstd * weight, rstd = 1 / sqrt(mean(inp^2) + eps) per row (N,)."""
    x = np.asarray(inp, np.float64)
    rstd = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return x * rstd * weight, rstd.reshape(-1)


def rmsnorm_backward(dout, inp, weight, rstd):
    """-> dinp, dweight."""
    x, g = np.asarray(inp, np.float64), np.asarray(dout, np.float64)
    r = np.asarray(rstd, np.float64).reshape(x.shape[:-1] + (1,))
    norm = x * r
    dn = g * weight
    dinp = r * (dn - norm * (dn * norm).mean(-1, keepdims=True))
    return dinp, (g * norm).reshape(-1, x.shape[-1]).sum(0)


def rope_tables(positions, head_size, base=10000.0):
    """(cos, sin) float64 (positions, head_size / 2): angle p * base^(-2i / head_size)."""
    angle = np.arange(positions, dtype=np.float64)[:, None] * base ** (-np.arange(0, head_size, 2) / head_size)
    return np.cos(angle), np.sin(angle)


def _rotate(x, cos, sin, positions, sign, interleaved):
    x = np.asarray(x, np.float64)
    h = x.shape[-1] // 2
    c = np.asarray(cos, np.float64)[positions][..., None, :]  # (..., 1, HS/2): every head of a row alike
    s = sign * np.asarray(sin, np.float64)[positions][..., None, :]
    if interleaved:  # pairs (2i, 2i + 1)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return np.stack([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).reshape(x.shape)
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def rope_forward(inp, cos, sin, positions, interleaved=False):
    """inp (..., NH, HS), positions (...): Hugging Face's q * cos + rotate_half(q) * sin; interleaved: the pairs
    (2i, 2i + 1) rotated instead (llama.cpp's)."""
    return _rotate(inp, cos, sin, positions, 1.0, interleaved)


def rope_backward(dout, cos, sin, positions, interleaved=False):
    return _rotate(dout, cos, sin, positions, -1.0, interleaved)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def swiglu_forward(gate, up):
    g = np.asarray(gate, np.float64)
    return _silu(g) * up


def swiglu_backward(dout, gate, up):
    """-> dgate, dup."""
    g, u, d = (np.asarray(a, np.float64) for a in (gate, up, dout))
    s = 1.0 / (1.0 + np.exp(-g))
    return d * u * s * (1.0 + g * (1.0 - s)), d * g * s


def geglu_forward(gate, up):
    return gelu_forward(gate, "tanh") * up


def geglu_backward(dout, gate, up):
    """-> dgate, dup."""
    d = np.asarray(dout, np.float64)
    return gelu_backward(d * up, gate, "tanh"), d * gelu_forward(gate, "tanh")


# --- GGUF block formats (ggml-quants.c), the numbers each block stands for ------------------------------------


def _f16(b):
    return np.ascontiguousarray(b).view(np.float16).astype(np.float64)


_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34, "IQ4_NL": 18, "Q2_K": 84, "Q3_K": 110,
                "Q4_K": 144, "Q5_K": 176, "Q6_K": 210, "IQ4_XS": 136}
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float64)


def _bits(b, n):
    """The n low-first bits of the bytes b (blocks, k) as (blocks, 8 k) ints."""
    return np.unpackbits(np.ascontiguousarray(b), axis=1, bitorder="little")[:, :n].astype(np.int64)


def _nibbles(qs, group=16):
    """(blocks, group k) bytes -> (blocks, 2 group k) ints: per group of bytes their low nibbles, then their high
    nibbles."""
    q = qs.reshape(qs.shape[0], -1, 1, group).astype(np.int64)
    return np.concatenate([q & 15, q >> 4], axis=2).reshape(qs.shape[0], -1)


def _scale_min_k4(sc):
    """Q4_K / Q5_K's 12 bytes -> 8 six-bit scales, 8 six-bit mins."""
    sc = sc.astype(np.int64)
    scale = np.concatenate([sc[:, 0:4] & 63, (sc[:, 8:12] & 15) | ((sc[:, 0:4] >> 6) << 4)], axis=1)
    mins = np.concatenate([sc[:, 4:8] & 63, (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)], axis=1)
    return scale, mins


def dequantize(data, qtype, cols):
    """uint8 (rows, row_bytes) in GGUF type qtype (a name in ops.QTYPES) -> float64 (rows, cols): ggml-quants.c's
    dequantize_row_* written over whole blocks."""
    data = np.asarray(data, np.uint8)
    rows = data.shape[0]
    if qtype == "F32":
        return data.view(np.float32).astype(np.float64).reshape(rows, cols)
    if qtype == "F16":
        return data.view(np.float16).astype(np.float64).reshape(rows, cols)
    if qtype == "BF16":
        return from_bfloat16(data.view(np.uint16)).reshape(rows, cols)
    b = data.reshape(-1, _BLOCK_BYTES[qtype])
    n = b.shape[0]
    if qtype == "Q8_0":
        y = _f16(b[:, :2]) * b[:, 2:].view(np.int8)
    elif qtype in ("Q4_0", "Q4_1"):
        head = 2 if qtype == "Q4_0" else 4
        q = _nibbles(b[:, head:]).astype(np.float64)
        d = _f16(b[:, :2])
        y = (q - 8) * d if qtype == "Q4_0" else q * d + _f16(b[:, 2:4])
    elif qtype in ("Q5_0", "Q5_1"):
        head = 2 if qtype == "Q5_0" else 4
        q = (_nibbles(b[:, head + 4:]) | (_bits(b[:, head:head + 4], 32) << 4)).astype(np.float64)
        d = _f16(b[:, :2])
        y = (q - 16) * d if qtype == "Q5_0" else q * d + _f16(b[:, 2:4])
    elif qtype == "IQ4_NL":
        y = _f16(b[:, :2]) * IQ4_VALUES[_nibbles(b[:, 2:])]
    elif qtype in ("Q4_K", "Q5_K"):
        d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
        scale, mins = _scale_min_k4(b[:, 4:16])
        q = _nibbles(b[:, -128:], 32).reshape(n, 8, 32)  # sub-block order: pair p's low nibbles, then its high ones
        if qtype == "Q5_K":  # bit 2 p (low nibbles), 2 p + 1 (high) of qh[l]: bit s of qh[l] for sub-block s
            qh = b[:, 16:48].astype(np.int64)
            q = q | (((qh[:, None, :] >> np.arange(8)[None, :, None]) & 1) << 4)
        y = (d[:, :, None] * scale[:, :, None] * q - dmin[:, :, None] * mins[:, :, None]).reshape(-1, 256)
    elif qtype in ("Q2_K", "Q3_K"):
        # 2-bit q: sub-block s = 8 h + 2 k + i holds bit pair k of qs[32 h + 16 i + l], l < 16
        qs = b[:, 16:80] if qtype == "Q2_K" else b[:, 32:96]
        q2 = (qs.reshape(n, 2, 1, 2, 16).astype(np.int64) >> (2 * np.arange(4))[None, None, :, None, None]) & 3
        q = q2.reshape(n, 16, 16)
        if qtype == "Q2_K":
            sc = b[:, :16].astype(np.int64)
            d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
            y = d[:, :, None] * (sc & 15)[:, :, None] * q - dmin[:, :, None] * (sc >> 4)[:, :, None]
        else:  # q - 4 unless bit 4 h + k of hmask[16 i + l]; six-bit scales: low 4 bits, then 2 high bits
            hm = b[:, :32].reshape(n, 1, 1, 2, 16).astype(np.int64)
            high = (hm >> (np.arange(2)[:, None, None, None] * 4 + np.arange(4)[None, :, None, None])) & 1
            q = q - 4 * (1 - high.reshape(n, 16, 16))
            sc = b[:, 96:108].astype(np.int64)
            low = np.concatenate([sc[:, :8] & 15, sc[:, :8] >> 4], axis=1)
            top = (sc[:, 8:12][:, None, :] >> (2 * np.arange(4))[None, :, None]).reshape(n, 16) & 3
            y = _f16(b[:, 108:110])[:, :, None] * ((low | (top << 4)) - 32)[:, :, None] * q
    elif qtype == "IQ4_XS":
        sh = b[:, 2:4].copy().view(np.uint16).astype(np.int64)
        sl = b[:, 4:8].astype(np.int64)
        low = np.stack([sl & 15, sl >> 4], axis=2).reshape(n, 8)
        ls = low | (((sh >> (2 * np.arange(8))) & 3) << 4)
        q = IQ4_VALUES[_nibbles(b[:, 8:]).reshape(n, 8, 32)]
        y = _f16(b[:, :2])[:, :, None] * (ls - 32)[:, :, None] * q
    else:  # Q6_K
        ql, qh = b[:, :128].astype(np.int64), b[:, 128:192].astype(np.int64)
        sc = b[:, 192:208].view(np.int8).astype(np.float64)
        d = _f16(b[:, 208:210])
        y = np.empty((n, 256))
        for half in range(2):
            l_, h_ = ql[:, 64 * half: 64 * half + 64], qh[:, 32 * half: 32 * half + 32]
            parts = [(l_[:, :32] & 15) | ((h_ & 3) << 4), (l_[:, 32:] & 15) | (((h_ >> 2) & 3) << 4),
                     (l_[:, :32] >> 4) | (((h_ >> 4) & 3) << 4), (l_[:, 32:] >> 4) | (((h_ >> 6) & 3) << 4)]
            for k, q in enumerate(parts):
                s = np.repeat(sc[:, 8 * half + 2 * k: 8 * half + 2 * k + 2], 16, axis=1)
                y[:, 128 * half + 32 * k: 128 * half + 32 * k + 32] = d * s * (q - 32)
    return y.reshape(rows, cols)


# --- int8 activations (llama.cpp's Q8 blocks): the quantised products' other operand -------------------------

Q8_K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS")


def activation_block(qtype):
    """The activations' block for a weight type: 256 (Q8_K) for the K types and IQ4_XS, else 32 (Q8_0 / Q8_1)."""
    return 256 if qtype in Q8_K_TYPES else 32


def quantize_activations(inp, block):
    """float32 (N, C) -> int8 values q (N, C) and float64 scales d (N, C / block), x ~ d q per block. The rounding
    is llama.cpp's, in float32 as it computes it: block 32 (quantize_row_q8_0 / q8_1, x86): id = 127 / amax,
    q = round-half-even(x id), d = fp16(amax / 127); block 256 (quantize_row_q8_K): max = the value of largest
    magnitude, iscale = -127 / max, q = min(127, round-half-even(iscale x)), d = 1 / iscale (float32)."""
    x = np.asarray(inp, np.float32)
    N, C = x.shape
    xb = x.reshape(N, C // block, block)
    amax = np.abs(xb).max(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        if block == 32:
            iscale = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
            d = (amax / np.float32(127)).astype(np.float16).astype(np.float64)
        else:
            at = np.abs(xb).argmax(axis=2)[..., None]
            big = np.take_along_axis(xb, at, axis=2)
            iscale = np.where(amax > 0, np.float32(-127) / big, np.float32(0)).astype(np.float32)
            d = np.where(amax > 0, np.float32(1) / iscale, np.float32(0)).astype(np.float64)
    q = np.minimum(np.rint(xb * iscale), 127).astype(np.int8)  # (float32 products, as the C++ computes them)
    return q.reshape(N, C), d.reshape(N, C // block)


def matmul_q8_forward(inp, data, qtype, bias=None):
    """The product with int8 activations: inp (N, IC) quantised per block (quantize_activations), times the
    (OC, IC) GGUF weight data in qtype, exactly (integer sums, float64 scales) -> float64 (N, OC) + bias."""
    N, IC = np.shape(inp)
    q, d = quantize_activations(inp, activation_block(qtype))
    a = (q.reshape(N, d.shape[1], -1) * d[:, :, None]).reshape(N, IC)
    return matmul_forward(a, dequantize(data, qtype, IC), bias)


# --- search: the first passes over sign bits and int8 rows ------------------------------------------------------


def hamming_distances(signs, query):
    """signs (W, N) uint64, query (W,) uint64 -> (N,) int64: the bits in which each row differs from the query."""
    return sum(np.bitwise_count(signs[w] ^ query[w]).astype(np.int64) for w in range(signs.shape[0]))


def hamming_candidates_forward(signs, queries, n):
    """signs (W, N), queries (Q, W) uint64 -> for each query the ascending ids of every row within the distance of
    its min(n, N)-th nearest row (ties included): a list of Q int64 arrays."""
    found = []
    for q in queries:
        d = hamming_distances(signs, q)
        found.append(np.flatnonzero(d <= np.sort(d)[min(n, d.size) - 1]))
    return found


def int8_candidates_forward(codes, scale, queries, n):
    """codes (N, D) int8, scale (N,) float32, queries (Q, D) int8 -> ids (Q, min(n, N)): the rows of highest
    float32(exact integer dot) * scale (float32 product; NaN ranks as -inf; ties: the lower id), ascending."""
    dots = codes.astype(np.int64) @ queries.astype(np.int64).T  # (N, Q), exact
    scores = dots.astype(np.float32) * scale[:, None].astype(np.float32)
    scores[np.isnan(scores)] = -np.inf
    rows = np.arange(codes.shape[0])
    k = min(n, codes.shape[0])
    return np.stack([np.sort(np.lexsort((rows, -s))[:k]) for s in scores.T])


# --- optimizer -----------------------------------------------------------------------------------------------


def adamw_step(params, m, v, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, step=1):
    """torch.optim.AdamW, one step. -> params, m, v (new arrays)."""
    p, g = np.asarray(params, np.float64), np.asarray(grads, np.float64)
    m = beta1 * np.asarray(m, np.float64) + (1 - beta1) * g
    v = beta2 * np.asarray(v, np.float64) + (1 - beta2) * g * g
    p = p * (1 - lr * weight_decay)
    mhat = m / (1 - beta1**step)
    vhat = v / (1 - beta2**step)
    return p - lr * mhat / (np.sqrt(vhat) + eps), m, v


def sum_squares(x):
    x = np.asarray(x, np.float64)
    return float((x * x).sum())
