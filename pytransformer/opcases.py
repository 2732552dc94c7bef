"""One registry of op cases, in the manner of ggml's test-backend-ops: each `Case` is one description of an op
call (the op, its sizes, options, tolerance) that three users iterate:

- the test suite (tests/test_op_cases.py): every case tagged "test", under every ISA variant here, against the
  float64 reference (pytransformer.reference), forward and backward;
- `pytransformer info`'s self-check (selfcheck.py): the small cases tagged "check";
- bench/kernel_bench.py: the cases tagged "bench", timed against NumPy and PyTorch on the same inputs.

An `Op` says how to exercise one op family: inputs from the sizes (`make`), every output of ours (`ours`) and
of the reference (`reference`) on them, per-output tolerance floors, and for the bench the calls to time (with
preallocated outputs) and the work each does. Adding an op means one Op and its cases here; the tests, the
self-check and the bench pick them up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import ops
from . import reference as ref
from ._runtime import matmul_precision
from .cuda import DeviceArray, empty_like, zeros_like

TOL = 2e-5  # float32 kernels vs the float64 reference, relative to the largest reference magnitude


def rel_err(actual, expected, floor=0.0) -> float:
    """max |actual - expected| / max(max |expected|, floor), scale-free (0 when both are 0). Equal infinities
    (an lse of -inf where a row sees no key) count as exact; any other non-finite value is an infinite error."""
    a, b = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape {a.shape} != {b.shape}")
    if a.size == 0:
        return 0.0
    same = a == b
    if not (np.isfinite(a) | same).all():
        return math.inf
    with np.errstate(invalid="ignore"):  # -inf - -inf where both are -inf; masked out by `same`
        diff = float(np.where(same, 0.0, np.abs(a - b)).max())
    finite = np.abs(b[np.isfinite(b)])
    scale = max(float(finite.max()) if finite.size else 0.0, floor)
    return diff / scale if scale > 0 else diff


def empty(shape, like):
    """float32 `shape` where `like` lives (host, or a CUDA device for a DeviceArray)."""
    return DeviceArray.empty(shape) if type(like) is DeviceArray else np.empty(shape, np.float32)


def f32(rng, *shape, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


class Op:
    """How to exercise one op family. Subclasses fill in the methods; `s` is the case's sizes, `o` its options."""

    floors: dict = {}   # output name -> floor under the error's scale (e.g. GELU's 1 + erf cancellation)
    exact: tuple = ()   # outputs that must equal the reference rounded to float32, bit for bit
    group = "rowops"    # the bench's group

    def make(self, rng, s, o) -> dict:
        raise NotImplementedError

    def ours(self, x, o) -> dict:
        raise NotImplementedError

    def reference(self, x, o) -> dict:
        raise NotImplementedError

    def calls(self, x, o) -> dict:
        """Bench: direction -> a call of ours with its outputs preallocated."""
        raise NotImplementedError

    def work(self, s, o, direction):
        """Bench: (amount, unit) that one call of `direction` does (bytes moved or flops)."""
        raise NotImplementedError


class Matmul(Op):
    group = "matmul"

    def make(self, rng, s, o):
        N, IC, OC = s["N"], s["IC"], s["OC"]
        return {"inp": f32(rng, N, IC), "weight": f32(rng, OC, IC), "bias": f32(rng, OC), "dout": f32(rng, N, OC)}

    def ours(self, x, o):
        dinp, dweight, dbias = ops.matmul_backward(x["dout"], x["inp"], x["weight"])
        return {"out": ops.matmul_forward(x["inp"], x["weight"], x["bias"]),
                "out_no_bias": ops.matmul_forward(x["inp"], x["weight"]),
                "dinp": dinp, "dweight": dweight, "dbias": dbias}

    def reference(self, x, o):
        dinp, dweight, dbias = ref.matmul_backward(x["dout"], x["inp"], x["weight"])
        return {"out": ref.matmul_forward(x["inp"], x["weight"], x["bias"]),
                "out_no_bias": ref.matmul_forward(x["inp"], x["weight"]),
                "dinp": dinp, "dweight": dweight, "dbias": dbias}

    def calls(self, x, o):
        out = empty(x["dout"].shape, like=x["inp"])
        dx, dw, db = empty_like(x["inp"]), zeros_like(x["weight"]), zeros_like(x["bias"])
        calls = {"forward": lambda: ops.matmul_forward(x["inp"], x["weight"], x["bias"], out=out),
                 "backward": lambda: ops.matmul_backward(x["dout"], x["inp"], x["weight"], dinp=dx, dweight=dw,
                                                         dbias=db)}
        precision = o.get("precision", "float32")
        return {k: _under(precision, fn) for k, fn in calls.items()}

    def work(self, s, o, direction):
        return (2.0 if direction == "forward" else 4.0) * s["N"] * s["IC"] * s["OC"], "GFLOP/s"


def _under(precision, fn):
    """fn run under a matmul precision ("bfloat16": the products on AMX tiles), the setting restored after."""
    if precision == "float32":
        return fn

    def run():
        with matmul_precision(precision):
            return fn()
    return run


class InferenceProduct(Op):
    """A forward-only product with an inference weight (bf16, int8 + scale, GGUF blocks): the bench's call and
    work are the same for every kind; `weight_kw` gives the weight's extra arguments."""

    group = "matmul"

    def weight_kw(self, x) -> dict:
        return {}

    def calls(self, x, o):
        out = empty((x["inp"].shape[0], x["weight"].shape[0]), like=x["inp"])
        kw = self.weight_kw(x)
        return {"forward": lambda: ops.matmul_forward(x["inp"], x["weight"], x["bias"], out=out, **kw)}

    def work(self, s, o, direction):
        return 2.0 * s["N"] * s["IC"] * s["OC"], "GFLOP/s"


class MatmulBf16Weights(InferenceProduct):
    """The product with bfloat16 weights (uint16 bits) used for inference: forward only."""

    def make(self, rng, s, o):
        N, IC, OC = s["N"], s["IC"], s["OC"]
        return {"inp": f32(rng, N, IC), "weight": ops.to_bfloat16(f32(rng, OC, IC)), "bias": f32(rng, OC)}

    def ours(self, x, o):
        return {"out": ops.matmul_forward(x["inp"], x["weight"], x["bias"]),
                "out_no_bias": ops.matmul_forward(x["inp"], x["weight"])}

    def reference(self, x, o):
        return {"out": ref.matmul_forward(x["inp"], x["weight"], x["bias"]),
                "out_no_bias": ref.matmul_forward(x["inp"], x["weight"])}


class MatmulInt8Weights(InferenceProduct):
    """The product with int8 weights and a float32 scale per output row (inference): forward only."""

    def make(self, rng, s, o):
        N, IC, OC = s["N"], s["IC"], s["OC"]
        q, scale = ops.quantize_int8(f32(rng, OC, IC))
        return {"inp": f32(rng, N, IC), "weight": q, "scale": scale, "bias": f32(rng, OC)}

    def ours(self, x, o):
        return {"out": ops.matmul_forward(x["inp"], x["weight"], x["bias"], weight_scale=x["scale"])}

    def reference(self, x, o):
        return {"out": ref.matmul_forward(x["inp"], x["weight"], x["bias"], weight_scale=x["scale"])}

    def weight_kw(self, x):
        return {"weight_scale": x["scale"]}


class LayerNorm(Op):
    def make(self, rng, s, o):
        N, C = s["N"], s["C"]
        return {"inp": f32(rng, N, C, scale=3.0, shift=1.0), "weight": f32(rng, C), "bias": f32(rng, C),
                "dout": f32(rng, N, C)}

    def ours(self, x, o):
        out, mean, rstd = ops.layernorm_forward(x["inp"], x["weight"], x["bias"], 1e-5)
        dinp, dweight, dbias = ops.layernorm_backward(x["dout"], x["inp"], x["weight"], mean, rstd)
        return {"out": out, "mean": mean, "rstd": rstd, "dinp": dinp, "dweight": dweight, "dbias": dbias}

    def reference(self, x, o):
        out, mean, rstd = ref.layernorm_forward(x["inp"], x["weight"], x["bias"], 1e-5)
        dinp, dweight, dbias = ref.layernorm_backward(x["dout"], x["inp"], x["weight"], mean, rstd)
        return {"out": out, "mean": mean, "rstd": rstd, "dinp": dinp, "dweight": dweight, "dbias": dbias}

    def calls(self, x, o):
        inp, w, b = x["inp"], x["weight"], x["bias"]
        out, mean, rstd = empty_like(inp), empty(len(inp), like=inp), empty(len(inp), like=inp)
        ops.layernorm_forward(inp, w, b, out=out, mean=mean, rstd=rstd)
        dx, dw, db = empty_like(inp), zeros_like(w), zeros_like(b)
        return {"forward": lambda: ops.layernorm_forward(inp, w, b, out=out, mean=mean, rstd=rstd),
                "backward": lambda: ops.layernorm_backward(x["dout"], inp, w, mean, rstd, dinp=dx, dweight=dw,
                                                           dbias=db)}

    def work(self, s, o, direction):  # forward reads x, writes y; backward reads x and dout, writes dinp
        return (2.0 if direction == "forward" else 3.0) * s["N"] * s["C"] * 4, "GB/s"


class Gelu(Op):
    floors = {"out": 1.0, "dinp": 1.0}  # 1 + erf(x / sqrt 2) cancels for x << 0 in float32 (as in torch)

    def make(self, rng, s, o):
        return {"inp": f32(rng, s["n"], scale=3.0), "dout": f32(rng, s["n"])}

    def ours(self, x, o):
        a = o["approximate"]
        return {"out": ops.gelu_forward(x["inp"], a), "dinp": ops.gelu_backward(x["dout"], x["inp"], a)}

    def reference(self, x, o):
        a = o["approximate"]
        return {"out": ref.gelu_forward(x["inp"], a), "dinp": ref.gelu_backward(x["dout"], x["inp"], a)}

    def calls(self, x, o):
        a, out, dx = o["approximate"], empty_like(x["inp"]), empty_like(x["inp"])
        return {"forward": lambda: ops.gelu_forward(x["inp"], a, out=out),
                "backward": lambda: ops.gelu_backward(x["dout"], x["inp"], a, dinp=dx)}

    def work(self, s, o, direction):
        return (2.0 if direction == "forward" else 3.0) * s["n"] * 4, "GB/s"


class Relu(Op):
    exact = ("out", "dinp")

    def make(self, rng, s, o):
        return {"inp": f32(rng, s["n"]), "dout": f32(rng, s["n"])}

    def ours(self, x, o):
        return {"out": ops.relu_forward(x["inp"]), "dinp": ops.relu_backward(x["dout"], x["inp"])}

    def reference(self, x, o):
        return {"out": ref.relu_forward(x["inp"]), "dinp": ref.relu_backward(x["dout"], x["inp"])}

    def calls(self, x, o):
        out, dx = empty_like(x["inp"]), empty_like(x["inp"])
        return {"forward": lambda: ops.relu_forward(x["inp"], out=out),
                "backward": lambda: ops.relu_backward(x["dout"], x["inp"], dinp=dx)}

    def work(self, s, o, direction):
        return (2.0 if direction == "forward" else 3.0) * s["n"] * 4, "GB/s"


class Softmax(Op):
    def make(self, rng, s, o):
        return {"inp": f32(rng, s["N"], s["C"], scale=5.0), "dout": f32(rng, s["N"], s["C"])}

    def ours(self, x, o):
        out = ops.softmax_forward(x["inp"])
        return {"out": out, "dinp": ops.softmax_backward(x["dout"], out)}

    def reference(self, x, o):
        out = ref.softmax_forward(x["inp"])
        return {"out": out, "dinp": ref.softmax_backward(x["dout"], out)}

    def calls(self, x, o):
        out, dx = ops.softmax_forward(x["inp"]), empty_like(x["inp"])
        return {"forward": lambda: ops.softmax_forward(x["inp"], out=out),
                "backward": lambda: ops.softmax_backward(x["dout"], out, dinp=dx)}

    def work(self, s, o, direction):
        return (2.0 if direction == "forward" else 3.0) * s["N"] * s["C"] * 4, "GB/s"


class CrossEntropy(Op):
    floors = {"loss": 1.0, "losses": 1.0}  # (V = 1: every loss is 0, what is left is rounding)

    def make(self, rng, s, o):
        N, V = s["N"], s["V"]
        targets = rng.integers(0, V, N)
        if N > 2 and o.get("ignored", True):
            targets[1] = -100  # one ignored row
        return {"logits": f32(rng, N, V, scale=4.0), "targets": targets}

    def ours(self, x, o):
        eps = o.get("smoothing", 0.0)
        loss, losses, lse = ops.crossentropy_forward(x["logits"], x["targets"], label_smoothing=eps)
        return {"loss": loss, "losses": losses, "lse": lse,
                "dlogits": ops.crossentropy_backward(x["logits"], x["targets"], lse, 0.5, label_smoothing=eps)}

    def reference(self, x, o):
        eps = o.get("smoothing", 0.0)
        loss, losses, lse = ref.crossentropy_forward(x["logits"], x["targets"], label_smoothing=eps)
        return {"loss": loss, "losses": losses, "lse": lse,
                "dlogits": ref.crossentropy_backward(x["logits"], x["targets"], lse, 0.5, label_smoothing=eps)}

    def calls(self, x, o):
        N = len(x["targets"])
        losses, lse, dx = empty(N, like=x["logits"]), empty(N, like=x["logits"]), empty_like(x["logits"])
        ops.crossentropy_forward(x["logits"], x["targets"], losses=losses, lse=lse)
        return {"forward": lambda: ops.crossentropy_forward(x["logits"], x["targets"], losses=losses, lse=lse),
                "backward": lambda: ops.crossentropy_backward(x["logits"], x["targets"], lse, dlogits=dx)}

    def work(self, s, o, direction):  # forward reads the logits; backward reads them and writes dlogits
        return (1.0 if direction == "forward" else 2.0) * s["N"] * s["V"] * 4, "GB/s"


class Embedding(Op):
    exact = ("out",)

    def make(self, rng, s, o):  # with N > V, ids repeat
        N, V, C = s["N"], s["V"], s["C"]
        return {"table": f32(rng, V, C), "ids": rng.integers(0, V, N), "dout": f32(rng, N, C)}

    def ours(self, x, o):
        V = x["table"].shape[0]
        return {"out": ops.embedding_forward(x["ids"], x["table"]),
                "dtable": ops.embedding_backward(x["dout"], x["ids"], V)}

    def reference(self, x, o):
        V = x["table"].shape[0]
        return {"out": ref.embedding_forward(x["ids"], x["table"]),
                "dtable": ref.embedding_backward(x["dout"], x["ids"], V)}

    def calls(self, x, o):
        out, dtable = empty(x["dout"].shape, like=x["table"]), zeros_like(x["table"])
        V = x["table"].shape[0]
        return {"forward": lambda: ops.embedding_forward(x["ids"], x["table"], out=out),
                "backward": lambda: ops.embedding_backward(x["dout"], x["ids"], V, dtable=dtable)}

    def work(self, s, o, direction):  # rows gathered and written; backward reads dout, reads and writes rows
        return (2.0 if direction == "forward" else 3.0) * s["N"] * s["C"] * 4, "GB/s"


class Residual(Op):
    exact = ("out", "da", "db")

    def make(self, rng, s, o):
        return {"a": f32(rng, s["n"]), "b": f32(rng, s["n"])}

    def ours(self, x, o):
        da, db = ops.residual_backward(x["a"])
        return {"out": ops.residual_forward(x["a"], x["b"]), "da": da, "db": db}

    def reference(self, x, o):
        da, db = ref.residual_backward(x["a"])
        return {"out": ref.residual_forward(x["a"], x["b"]), "da": da, "db": db}

    def calls(self, x, o):
        out, da, db = empty_like(x["a"]), empty_like(x["a"]), empty_like(x["a"])
        return {"forward": lambda: ops.residual_forward(x["a"], x["b"], out=out),
                "backward": lambda: ops.residual_backward(x["a"], da=da, db=db)}

    def work(self, s, o, direction):
        return 3.0 * s["n"] * 4, "GB/s"


class Dropout(Op):
    def make(self, rng, s, o):
        return {"inp": f32(rng, s["n"]), "dout": f32(rng, s["n"])}

    def ours(self, x, o):
        p, seed = o["p"], o["seed"]
        return {"out": ops.dropout_forward(x["inp"], p, seed), "dinp": ops.dropout_backward(x["dout"], p, seed)}

    def reference(self, x, o):
        p, seed = o["p"], o["seed"]
        return {"out": ref.dropout_forward(x["inp"], p, seed), "dinp": ref.dropout_backward(x["dout"], p, seed)}

    def calls(self, x, o):
        p, seed, out, dx = o["p"], o["seed"], empty_like(x["inp"]), empty_like(x["inp"])
        return {"forward": lambda: ops.dropout_forward(x["inp"], p, seed, out=out),
                "backward": lambda: ops.dropout_backward(x["dout"], p, seed, dinp=dx)}

    def work(self, s, o, direction):
        return 2.0 * s["n"] * 4, "GB/s"


class Attention(Op):
    group = "attention"

    def make(self, rng, s, o):
        B, NH, Tq, Tk, HS = s["B"], s["NH"], s["Tq"], s["Tk"], s["HS"]
        NKV = s.get("NKV", NH)  # grouped-query attention when fewer key/value heads
        x = {"q": f32(rng, B, NH, Tq, HS), "k": f32(rng, B, NKV, Tk, HS), "v": f32(rng, B, NKV, Tk, HS),
             "dout": f32(rng, B, NH, Tq, HS), "key_mask": None}
        if o.get("masked"):
            mask = rng.random((B, Tk)) > 0.3
            mask[0, -1] = False
            if B > 1:
                mask[1] = False  # a sequence with no visible key: zeros, never NaN
            x["key_mask"] = mask
        return x

    @staticmethod
    def _run(lib, x, o):
        causal, window = o.get("causal", False), o.get("window", 0)
        out, lse = lib.attention_forward(x["q"], x["k"], x["v"], causal, x["key_mask"], window=window)
        dq, dk, dv = lib.attention_backward(x["dout"], x["q"], x["k"], x["v"], out, lse, causal, x["key_mask"],
                                            window=window)
        return {"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv}

    def ours(self, x, o):
        return self._run(ops, x, o)

    def reference(self, x, o):
        return self._run(ref, x, o)

    def calls(self, x, o):
        q, k, v, g, mask, causal = x["q"], x["k"], x["v"], x["dout"], x["key_mask"], o.get("causal", False)
        window = o.get("window", 0)
        out, lse = empty_like(q), empty(q.shape[:3], like=q)
        dq, dk, dv = empty_like(q), empty_like(k), empty_like(v)

        def forward():
            ops.attention_forward(q, k, v, causal, mask, out=out, lse=lse, window=window)

        def forward_backward():
            forward()
            ops.attention_backward(g, q, k, v, out, lse, causal, mask, dq=dq, dk=dk, dv=dv, window=window)

        if q.shape[2] == 1:  # (one query: decoding, which has no backward)
            return {"forward": forward}
        return {"forward": forward, "fwd+bwd": forward_backward}

    def work(self, s, o, direction):
        # QK^T and PV forward; dV, dP, dQ, dK backward (the recomputed QK^T not counted); causal halves it
        products = 2 if direction == "forward" else 6
        full = products * 2.0 * s["B"] * s["NH"] * s["Tq"] * s["Tk"] * s["HS"]
        return full / 2 if o.get("causal") else full, "GFLOP/s"



class AttentionHalfCache(Attention):
    """A KV cache of halves (generate.KVCache "float16"): k and v (B, NKV, Tkv, HS) rounded to halves as a cache
    stores them (ops.to_float16), Tkv = Tk + 5 rows of which the first Tk are in use (kv_len), attention forward over
    them widened exactly as they are read. Against NumPy's float16 cast (one half-step off in a value near 1 is an
    error of ~1e-4 of the largest) and the float64 attention over those halves: float32 rounding, as with a float32
    cache. (Saturation and ties: tests/test_kv_cache.py, bit for bit.)"""

    def make(self, rng, s, o):
        x = super().make(rng, dict(s, Tk=s["Tk"] + 5), o)
        if x["key_mask"] is not None:
            x["key_mask"] = np.ascontiguousarray(x["key_mask"][:, :s["Tk"]])
        return x

    @staticmethod
    def _attend(lib, x, o, k, v):
        Tk = k.shape[2] - 5
        return lib.attention_forward(x["q"], k[:, :, :Tk], v[:, :, :Tk], o.get("causal", False), x["key_mask"],
                                     window=o.get("window", 0))

    def ours(self, x, o):
        k, v = ops.to_float16(x["k"]), ops.to_float16(x["v"])
        Tk = k.shape[2] - 5
        out, lse = ops.attention_forward(x["q"], k, v, o.get("causal", False), x["key_mask"], kv_len=Tk,
                                         window=o.get("window", 0))
        return {"out": out, "lse": lse, "k": k.astype(np.float32), "v": v.astype(np.float32)}

    def reference(self, x, o):
        k, v = (np.clip(x[n], -65504, 65504).astype(np.float16).astype(np.float64) for n in ("k", "v"))
        out, lse = self._attend(ref, x, o, k, v)
        return {"out": out, "lse": lse, "k": k, "v": v}

    def calls(self, x, o):
        q, mask, causal = x["q"], x["key_mask"], o.get("causal", False)
        k, v, Tk = ops.to_float16(x["k"]), ops.to_float16(x["v"]), x["k"].shape[2] - 5
        out, lse = empty_like(q), empty(q.shape[:3], like=q)
        return {"forward": lambda: ops.attention_forward(q, k, v, causal, mask, out=out, lse=lse, kv_len=Tk,
                                                         window=o.get("window", 0))}

class RMSNorm(Op):
    floors = {"dinp": 1.0}  # C = 1: dinp ~ eps is what remains of dnorm - norm * mean(dnorm * norm), |norm| ~ 1

    def make(self, rng, s, o):
        N, C = s["N"], s["C"]
        return {"inp": f32(rng, N, C, scale=3.0, shift=1.0), "weight": f32(rng, C), "dout": f32(rng, N, C)}

    def ours(self, x, o):
        out, rstd = ops.rmsnorm_forward(x["inp"], x["weight"], 1e-5)
        dinp, dweight = ops.rmsnorm_backward(x["dout"], x["inp"], x["weight"], rstd)
        return {"out": out, "rstd": rstd, "dinp": dinp, "dweight": dweight}

    def reference(self, x, o):
        out, rstd = ref.rmsnorm_forward(x["inp"], x["weight"], 1e-5)
        dinp, dweight = ref.rmsnorm_backward(x["dout"], x["inp"], x["weight"], rstd)
        return {"out": out, "rstd": rstd, "dinp": dinp, "dweight": dweight}

    def calls(self, x, o):
        inp, w = x["inp"], x["weight"]
        out, rstd = empty_like(inp), empty(len(inp), like=inp)
        ops.rmsnorm_forward(inp, w, out=out, rstd=rstd)
        dx, dw = empty_like(inp), zeros_like(w)
        return {"forward": lambda: ops.rmsnorm_forward(inp, w, out=out, rstd=rstd),
                "backward": lambda: ops.rmsnorm_backward(x["dout"], inp, w, rstd, dinp=dx, dweight=dw)}

    def work(self, s, o, direction):
        return (2.0 if direction == "forward" else 3.0) * s["N"] * s["C"] * 4, "GB/s"


class Rope(Op):
    """Rotary positions on (B, T, NH, HS) rows at arbitrary positions (a KV cache's, or left-padded rows')."""

    def make(self, rng, s, o):
        B, T, NH, HS, P = s["B"], s["T"], s["NH"], s["HS"], s["P"]
        cos, sin = ops.rope_tables(P, HS, o.get("base", 10000.0))
        return {"inp": f32(rng, B, T, NH, HS), "dout": f32(rng, B, T, NH, HS), "cos": cos, "sin": sin,
                "positions": rng.integers(0, P, (B, T)).astype(np.int64), "P": P, "HS": HS}

    def ours(self, x, o):
        args, il = (x["cos"], x["sin"], x["positions"]), o.get("interleaved", False)
        return {"out": ops.rope_forward(x["inp"], *args, interleaved=il),
                "dinp": ops.rope_backward(x["dout"], *args, interleaved=il)}

    def reference(self, x, o):
        # the reference's own float64 tables: checks ops.rope_tables too
        cos, sin = ref.rope_tables(x["P"], x["HS"], o.get("base", 10000.0))
        il = o.get("interleaved", False)
        return {"out": ref.rope_forward(x["inp"], cos, sin, x["positions"], il),
                "dinp": ref.rope_backward(x["dout"], cos, sin, x["positions"], il)}

    def calls(self, x, o):
        out, args = empty_like(x["inp"]), (x["cos"], x["sin"], x["positions"])  # (rotate_half layout)
        return {"forward": lambda: ops.rope_forward(x["inp"], *args, out=out),
                "backward": lambda: ops.rope_backward(x["dout"], *args, dinp=out)}

    def work(self, s, o, direction):
        return 2.0 * s["B"] * s["T"] * s["NH"] * s["HS"] * 4, "GB/s"


class Gated(Op):
    """A gated feed-forward's product act(gate) * up: SwiGLU (silu) or GeGLU (gelu_tanh), by the ops' prefix."""

    def __init__(self, name, floors=None):
        self.name, self.floors = name, floors or {}

    def make(self, rng, s, o):
        return {"gate": f32(rng, s["n"], scale=3.0), "up": f32(rng, s["n"]), "dout": f32(rng, s["n"])}

    def _run(self, lib, x):
        dgate, dup = getattr(lib, self.name + "_backward")(x["dout"], x["gate"], x["up"])
        return {"out": getattr(lib, self.name + "_forward")(x["gate"], x["up"]), "dgate": dgate, "dup": dup}

    def ours(self, x, o):
        return self._run(ops, x)

    def reference(self, x, o):
        return self._run(ref, x)

    def calls(self, x, o):
        out, dg, du = (empty_like(x["gate"]) for _ in range(3))
        forward, backward = getattr(ops, self.name + "_forward"), getattr(ops, self.name + "_backward")
        return {"forward": lambda: forward(x["gate"], x["up"], out=out),
                "backward": lambda: backward(x["dout"], x["gate"], x["up"], dgate=dg, dup=du)}

    def work(self, s, o, direction):
        return (3.0 if direction == "forward" else 5.0) * s["n"] * 4, "GB/s"


# GGUF block types: (values, bytes) of a block and the byte offsets of its fp16 scales
BLOCK_LAYOUT = {"Q4_0": (32, 18, [0]), "Q4_1": (32, 20, [0, 2]), "Q5_0": (32, 22, [0]), "Q5_1": (32, 24, [0, 2]),
                "Q8_0": (32, 34, [0]), "IQ4_NL": (32, 18, [0]), "Q2_K": (256, 84, [80, 82]),
                "Q3_K": (256, 110, [108]), "Q4_K": (256, 144, [0, 2]), "Q5_K": (256, 176, [0, 2]),
                "Q6_K": (256, 210, [208]), "IQ4_XS": (256, 136, [0])}


def random_blocks(rng, qtype, rows, cols):
    """A (rows, cols) matrix in a GGUF block format from random bytes (every bit pattern of the quantised values
    is a valid block) with finite fp16 scales in +-0.1: uint8 (rows, row_bytes)."""
    dense = {"F32": np.float32, "F16": np.float16}
    if qtype in dense:
        return np.ascontiguousarray(rng.standard_normal((rows, cols)).astype(dense[qtype]).view(np.uint8))
    if qtype == "BF16":
        return np.ascontiguousarray(ops.to_bfloat16(f32(rng, rows, cols)).view(np.uint8))
    values, size, scales = BLOCK_LAYOUT[qtype]
    data = rng.integers(0, 256, (rows, cols // values * size), dtype=np.uint8)
    blocks = data.reshape(-1, size)
    for at in scales:
        blocks[:, at:at + 2] = rng.uniform(-0.1, 0.1, (len(blocks), 1)).astype(np.float16).view(np.uint8)
    return data


class MatmulQuantized(InferenceProduct):
    """The product with a GGUF block-quantised weight (inference): forward only; and the table lookup."""
    def make(self, rng, s, o):
        N, IC, OC = s["N"], s["IC"], s["OC"]
        data = random_blocks(rng, o["qtype"], OC, IC)
        return {"inp": f32(rng, N, IC), "weight": ops.Quantized(data, o["qtype"], (OC, IC)), "bias": f32(rng, OC),
                "ids": rng.integers(0, OC, N).astype(np.int64)}

    def ours(self, x, o):
        return {"out": ops.matmul_forward(x["inp"], x["weight"], x["bias"]),
                "rows": ops.dequantize(x["weight"], x["ids"])}

    def reference(self, x, o):
        w = x["weight"]
        dense = ref.dequantize(w.data, w.qtype, w.shape[1])
        return {"out": ref.matmul_forward(x["inp"], dense, x["bias"]), "rows": dense[x["ids"]]}


class MatmulQuantizedInt8(MatmulQuantized):
    """The same product with the input quantised to int8 blocks (llama.cpp's Q8_0 / Q8_K) and integer sums: against
    reference.matmul_q8_forward, which quantises the input as the kernel does and sums exactly. What is left is
    float32 rounding of the per-block scales and of the sum over IC / block blocks, as in the float product; a
    quantisation that differs by one step in one value moves the output by ~1e-3 of its scale."""

    def ours(self, x, o):  # (and as a group of two products of one input: q|k|v's, gate|up's)
        group = ops.matmul_group_forward(x["inp"], [x["weight"]] * 2, [x["bias"], None])
        return {"out": ops.matmul_forward(x["inp"], x["weight"], x["bias"], activations="int8"),
                "group": np.concatenate(group, axis=-1)}

    def reference(self, x, o):
        w = x["weight"]
        out = ref.matmul_q8_forward(x["inp"], w.data, w.qtype, x["bias"])
        return {"out": out, "group": np.concatenate([out, ref.matmul_q8_forward(x["inp"], w.data, w.qtype)], -1)}

    def calls(self, x, o):
        out = empty((x["inp"].shape[0], x["weight"].shape[0]), like=x["inp"])
        return {"forward": lambda: ops.matmul_forward(x["inp"], x["weight"], x["bias"], out=out, activations="int8")}


class MatmulDinp(Op):
    """The gradient through a frozen weight (LoRA's base) in every form it is stored: o["weight"] is "float32",
    "bfloat16", "int8" (+ a row scale) or a GGUF type name (ops.Quantized); dinp = dout @ W against the float64
    product with W widened exactly (reference.widened, reference.dequantize)."""

    group = "matmul"

    def make(self, rng, s, o):
        N, IC, OC, kind = s["N"], s["IC"], s["OC"], o["weight"]
        x = {"dout": f32(rng, N, OC), "scale": None}
        if kind in ops.QTYPES:
            x["weight"] = ops.Quantized(random_blocks(rng, kind, OC, IC), kind, (OC, IC))
        elif kind == "int8":
            x["weight"], x["scale"] = ops.quantize_int8(f32(rng, OC, IC))
        else:
            w = f32(rng, OC, IC)
            x["weight"] = ops.to_bfloat16(w) if kind == "bfloat16" else w
        return x

    def ours(self, x, o):
        return {"dinp": ops.matmul_dinp(x["dout"], x["weight"], weight_scale=x["scale"])}

    def reference(self, x, o):
        w = x["weight"]
        dense = ref.dequantize(w.data, w.qtype, w.shape[1]) if isinstance(w, ops.Quantized) else w
        return {"dinp": ref.matmul_dinp(x["dout"], dense, x["scale"])}

    def calls(self, x, o):
        dinp = empty((x["dout"].shape[0], x["weight"].shape[1]), like=x["dout"])
        return {"backward": lambda: ops.matmul_dinp(x["dout"], x["weight"], dinp=dinp, weight_scale=x["scale"])}

    def work(self, s, o, direction):
        return 2.0 * s["N"] * s["IC"] * s["OC"], "GFLOP/s"


class AdamW(Op):
    group = "adamw"
    # m sums (1 - beta1) g terms that can cancel to ~1e-8: its rounding is relative to those terms (~0.1), not to m
    floors = {"m": 0.1}
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)

    def make(self, rng, s, o):
        n, steps = s["n"], o.get("steps", 3)
        return {"params": f32(rng, n), "grads": [f32(rng, n) for _ in range(steps)]}

    def ours(self, x, o):
        p = x["params"].copy()
        m, v = zeros_like(p), zeros_like(p)
        for step, g in enumerate(x["grads"], 1):
            ops.adamw_step(p, m, v, g, step=step, **self.hyper)
        return {"params": p, "m": m, "v": v}

    def reference(self, x, o):
        p, m, v = x["params"].astype(np.float64), np.zeros(x["params"].size), np.zeros(x["params"].size)
        for step, g in enumerate(x["grads"], 1):
            p, m, v = ref.adamw_step(p, m, v, g, step=step, **self.hyper)
        return {"params": p, "m": m, "v": v}

    def calls(self, x, o):
        p, g = x["params"], x["grads"][0]
        m, v = zeros_like(p), zeros_like(p)
        state = {"step": 0}

        def step():
            state["step"] += 1
            ops.adamw_step(p, m, v, g, 1e-4, 0.9, 0.95, 1e-8, 0.1, state["step"])

        return {"step": step}

    def work(self, s, o, direction):
        return 7.0 * s["n"] * 4, "GB/s"  # read p, g, m, v; write p, m, v


class MaskLogits(Op):
    """A grammar's bitmask on logits (N, V) in place (constrained decoding): words of random bits, whole words
    refused (0) and allowed (-1) among them; ids from `vocab` (default V) to V refused."""

    exact = ("logits",)  # (each logit kept or -inf)

    def make(self, rng, s, o):
        N, V = s["N"], s["V"]
        words = rng.integers(-2**31, 2**31, (N, (o.get("vocab", V) + 31) // 32)).astype(np.int32)
        words[rng.random(words.shape) < 0.25] = 0
        words[rng.random(words.shape) < 0.25] = -1
        return {"logits": f32(rng, N, V), "words": words}

    def ours(self, x, o):
        return {"logits": ops.mask_logits(x["logits"].copy(), x["words"], o.get("vocab", x["logits"].shape[1]))}

    def reference(self, x, o):
        return {"logits": ref.mask_logits(x["logits"], x["words"], o.get("vocab", x["logits"].shape[1]))}

    def calls(self, x, o):
        logits = x["logits"].copy()
        return {"forward": lambda: ops.mask_logits(logits, x["words"], o.get("vocab", logits.shape[1]))}

    def work(self, s, o, direction):
        return s["N"] * s["V"] * 4.0, "GB/s"  # (the row's bytes: refused entries written, the rest skipped)


class SumSquares(Op):
    floors = {"sum": 1.0, "norm": 1.0}

    def make(self, rng, s, o):
        return {"x": f32(rng, s["n"])}

    def ours(self, x, o):
        return {"sum": ops.sum_squares(x["x"]), "norm": ops.global_norm(x["x"])}

    def reference(self, x, o):
        total = ref.sum_squares(x["x"])
        return {"sum": total, "norm": math.sqrt(total)}

    def calls(self, x, o):
        return {"forward": lambda: ops.sum_squares(x["x"])}

    def work(self, s, o, direction):
        return 1.0 * s["n"] * 4, "GB/s"


class HammingCandidates(Op):
    """Search's first pass over sign bits: every row within the distance of each query's n-th nearest. Outputs as
    fixed shapes, exact: which rows each query selected (Q, N) and how many. Option ties: the rows are drawn from
    three patterns, so that ties at the n-th distance crowd it (more candidates than the first output's room)."""

    exact = ("selected", "count", "ascending")
    group = "search"

    def make(self, rng, s, o):
        N, W, Q = s["N"], s["W"], s["Q"]
        words = lambda *shape: rng.integers(0, 2**64, shape, np.uint64, endpoint=False)
        signs = words(W, N) if not o.get("ties") else words(W, 3)[:, rng.integers(0, 3, N)]
        return {"signs": np.ascontiguousarray(signs), "queries": words(Q, W)}

    @staticmethod
    def fixed(found, N):
        """Each query's ids -> which rows it selected (Q, N), how many (Q,), and 1 where every list ascends."""
        selected = np.zeros((len(found), N), np.float32)
        for q, ids in enumerate(found):
            selected[q, ids] = 1.0
        return {"selected": selected, "count": np.array([len(ids) for ids in found], np.float32),
                "ascending": np.float32(all((np.diff(ids) > 0).all() for ids in found))}

    def ours(self, x, o):
        found = ops.hamming_candidates_forward(x["signs"], x["queries"], o["take"])
        return self.fixed(found, x["signs"].shape[1])

    def reference(self, x, o):
        return self.fixed(ref.hamming_candidates_forward(x["signs"], x["queries"], o["take"]), x["signs"].shape[1])

    def calls(self, x, o):
        return {"forward": lambda: ops.hamming_candidates_forward(x["signs"], x["queries"], o["take"])}

    def work(self, s, o, direction):
        return 8.0 * s["N"] * s["W"], "GB/s"  # the rows' words, read once


class Int8Candidates(Op):
    """Search's first pass over int8 rows: the n best rows by float32(integer dot) * scale, as fixed shapes, exact:
    which rows each query selected (Q, N). Option ties: the rows are drawn from three patterns (equal scores at the
    n-th: the lower ids win); a NaN scale in the rows (it ranks last)."""

    exact = ("selected", "count", "ascending")
    group = "search"

    def make(self, rng, s, o):
        N, D, Q = s["N"], s["D"], s["Q"]
        ints = lambda *shape: rng.integers(-127, 128, shape).astype(np.int8)
        codes = ints(N, D) if not o.get("ties") else ints(3, D)[rng.integers(0, 3, N)]
        scale = np.ones(N, np.float32) if o.get("ties") else (rng.random(N) + 0.5).astype(np.float32)
        if o.get("nan"):
            scale[rng.integers(0, N, max(1, N // 10))] = np.nan
        return {"codes": np.ascontiguousarray(codes), "scale": scale, "queries": ints(Q, D)}

    def ours(self, x, o):
        ids = ops.int8_candidates_forward(x["codes"], x["scale"], x["queries"], o["take"])
        return HammingCandidates.fixed(list(ids), x["codes"].shape[0])

    def reference(self, x, o):
        ids = ref.int8_candidates_forward(x["codes"], x["scale"], x["queries"], o["take"])
        return HammingCandidates.fixed(list(ids), x["codes"].shape[0])

    def calls(self, x, o):
        return {"forward": lambda: ops.int8_candidates_forward(x["codes"], x["scale"], x["queries"], o["take"])}

    def work(self, s, o, direction):
        return 1.0 * s["N"] * s["D"], "GB/s"  # the rows' codes, read once


OPS = {"matmul": Matmul(), "matmul_bf16_weights": MatmulBf16Weights(),
       "matmul_dinp": MatmulDinp(),
       "matmul_int8_weights": MatmulInt8Weights(), "layernorm": LayerNorm(), "gelu": Gelu(), "relu": Relu(), "softmax": Softmax(),
       "crossentropy": CrossEntropy(), "embedding": Embedding(), "residual": Residual(), "dropout": Dropout(),
       "attention": Attention(), "attention_f16_cache": AttentionHalfCache(), "adamw": AdamW(), "sum_squares": SumSquares(), "rmsnorm": RMSNorm(),
       "rope": Rope(), "swiglu": Gated("swiglu"), "matmul_quantized": MatmulQuantized(),
       "geglu": Gated("geglu", {"out": 1.0, "dgate": 1.0, "dup": 1.0}),  # (floors as Gelu's: gelu_tanh(x << 0))
       "matmul_quantized_int8": MatmulQuantizedInt8(),
       "hamming_candidates": HammingCandidates(), "int8_candidates": Int8Candidates(), "mask_logits": MaskLogits()}


@dataclass(frozen=True)
class Case:
    """One op call: the op, its sizes and options, the tolerance, and who runs it (tags: test, check, bench)."""

    op: str
    sizes: tuple                      # ((name, value), ...) in the op's letters
    options: tuple = ()               # ((name, value), ...)
    tol: float = TOL
    tags: frozenset = field(default_factory=lambda: frozenset({"test"}))

    @property
    def s(self) -> dict:
        return dict(self.sizes)

    @property
    def o(self) -> dict:
        return dict(self.options)

    @property
    def spec(self) -> Op:
        return OPS[self.op]

    @property
    def label(self) -> str:
        parts = [self.op] + [f"{k}={v}" for k, v in self.sizes]
        parts += [k if v is True else f"{k}={v}" for k, v in self.options if v is not False]
        return " ".join(parts)

    def make(self, rng) -> dict:
        return self.spec.make(rng, self.s, self.o)

    def errors(self, x) -> dict:
        """output name -> (relative error of ours against the float64 reference, its tolerance)."""
        got, want = self.spec.ours(x, self.o), self.spec.reference(x, self.o)
        errors = {}
        for name in want:
            if name in self.spec.exact:  # the correctly rounded float32 of the reference, bit for bit
                errors[name] = (rel_err(got[name], np.asarray(want[name], np.float32)), 0.0)
            else:
                errors[name] = (rel_err(got[name], want[name], self.spec.floors.get(name, 0.0)), self.tol)
        return errors

    def calls(self, x) -> dict:
        return self.spec.calls(x, self.o)

    def work(self, direction):
        return self.spec.work(self.s, self.o, direction)


def case(op, tags=("test",), tol=TOL, **kw):
    """A Case from keyword sizes and options: upper-case keys (N, IC, Tq, ...) and n are sizes, the rest options."""
    sizes = tuple((k, v) for k, v in kw.items() if k[0].isupper() or k == "n")
    options = tuple((k, v) for k, v in kw.items() if not (k[0].isupper() or k == "n"))
    return Case(op, sizes, options, tol, frozenset(tags))


# --- the cases -------------------------------------------------------------------------------------------------
# Test sizes are awkward on purpose: 1, 3, 17, 63, 65, 130 (vector tails, tile edges), T = 1, HS not a multiple
# of 16, several K blocks (IC > 384), several N blocks (OC > 1024), rows 4 KB apart (IC or OC = 1024: packed
# instead of read in place). "check" marks the small ones `pytransformer info` runs; "bench" the timed ones.

TEST, CHECK, BENCH = ("test",), ("test", "check"), ("bench",)
QUANT_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K",
               "Q5_K", "Q6_K", "IQ4_XS")
QUANT_IC = {qtype: (7, 33, 700) if qtype in ("F32", "F16", "BF16") else (32, 160, 800) if qtype in (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL") else (256, 768, 1536) for qtype in QUANT_TYPES}

DINP_WEIGHTS = ("float32", "bfloat16", "int8", *QUANT_TYPES)  # (matmul_dinp's stored forms)
DINP_CHECKED = ("float32", "bfloat16", "int8", "Q4_1")  # (the self-check's: each kernel and form once)
DINP_IC = {**QUANT_IC, "float32": QUANT_IC["F32"], "bfloat16": QUANT_IC["F32"], "int8": QUANT_IC["F32"]}

CASES = [
    *[case("matmul", CHECK if (N, IC, OC) == (17, 63, 65) else TEST, N=N, IC=IC, OC=OC) for N, IC, OC in [
        (1, 1, 1), (1, 768, 130), (2, 33, 7), (3, 17, 65), (4, 3, 1), (17, 63, 65), (65, 130, 3), (130, 65, 130),
        (63, 600, 17), (5, 520, 3100), (256, 256, 192), (26, 1024, 1024)]],
    *[case("matmul_bf16_weights", CHECK if (N, IC, OC) == (17, 63, 65) else TEST, N=N, IC=IC, OC=OC)
      for N, IC, OC in [(1, 1, 1), (1, 768, 130), (2, 33, 7), (3, 17, 65), (17, 63, 65), (5, 520, 3100),
                        (130, 65, 130), (64, 1024, 1100)]],
    *[case("matmul_int8_weights", CHECK if (N, IC, OC) == (17, 63, 65) else TEST, N=N, IC=IC, OC=OC)
      for N, IC, OC in [(1, 1, 1), (1, 768, 130), (2, 33, 7), (3, 17, 65), (17, 63, 65), (5, 520, 3100),
                        (130, 65, 130), (64, 1024, 1100)]],
    # the gradient through a frozen weight of every stored form: 1, 3, 16 and 37 rows (the GEMM's row tiles and
    # their tails), OC across k-blocks (> 384), IC one, a few and many blocks (float forms: not a multiple of 16;
    # past 1024: several column blocks, which start on block boundaries)
    *[case("matmul_dinp", CHECK if N == 3 and kind in DINP_CHECKED else TEST, N=N, IC=DINP_IC[kind][k],
           OC=OC, weight=kind)
      for kind in DINP_WEIGHTS
      for N, k, OC in [(1, 0, 1), (3, 1, 7), (16, 2, 67), (37, 1, 400), (37, 2, 45)]],
    *[case("layernorm", CHECK if (N, Ch) == (17, 63) else TEST, N=N, C=Ch)
      for N, Ch in [(1, 1), (3, 17), (17, 63), (65, 130), (2, 65), (64, 768), (130, 1024)]],
    *[case("gelu", CHECK if n == 130 else TEST, n=n, approximate=a)
      for a in ("tanh", "none") for n in [1, 3, 17, 63, 65, 130, 70000]],
    *[case("relu", CHECK if n == 130 else TEST, n=n) for n in [1, 3, 17, 130, 70000]],
    *[case("softmax", CHECK if (N, Ch) == (17, 63) else TEST, N=N, C=Ch)
      for N, Ch in [(1, 1), (3, 17), (17, 63), (65, 130), (2, 65), (64, 768), (4, 50304)]],
    *[case("crossentropy", CHECK if (N, V, eps) == (17, 65, 0.0) else TEST, N=N, V=V, smoothing=eps)
      for N, V in [(1, 1), (3, 17), (17, 65), (64, 1000), (5, 50304)] for eps in (0.0, 0.1)],
    *[case("embedding", CHECK if (N, V, Ch) == (65, 10, 63) else TEST, N=N, V=V, C=Ch)
      for N, V, Ch in [(1, 1, 1), (3, 5, 17), (65, 10, 63), (130, 7, 130), (4096, 50, 768)]],
    case("residual", CHECK, n=195),
    *[case("dropout", CHECK if n == 130 else TEST, tol=1e-6, n=n, p=p, seed=seed)
      for n, p, seed in [(1, 0.5, 0), (130, 0.1, 3), (100003, 0.37, 2**63 + 5)]],
    *[case("attention", CHECK if (Bt, NH, Tq, HS) == (2, 3, 17, 8) else TEST, B=Bt, NH=NH, Tq=Tq, Tk=Tk, HS=HS,
           causal=causal, masked=masked)
      for Bt, NH, Tq, Tk, HS in [(1, 1, 1, 1, 1), (2, 3, 17, 17, 8), (1, 2, 65, 65, 63), (2, 2, 1, 130, 17),
                                 (1, 1, 130, 65, 16), (1, 2, 17, 33, 5), (2, 4, 64, 64, 64), (1, 1, 3, 130, 130)]
      for causal in (False, True) for masked in (False, True)],
    *[case("attention", TEST, B=Bt, NH=NH, NKV=NKV, Tq=Tq, Tk=Tk, HS=HS, causal=causal, masked=masked)
      for Bt, NH, NKV, Tq, Tk, HS in [(1, 9, 3, 17, 17, 64), (2, 4, 1, 1, 130, 17), (1, 6, 2, 130, 65, 16),
                                      (2, 4, 2, 65, 65, 8), (2, 10, 2, 1, 70, 72), (1, 9, 3, 4, 90, 64),
                                      (3, 8, 1, 2, 40, 136), (2, 8, 2, 1, 90, 128)]
      for causal in (False, True) for masked in (False, True)],
    # sliding windows (causal): shorter and longer than the sequence, one key, across tile edges (64), decoding
    # rows and the split path over a long cache, grouped heads, with and without padding
    *[case("attention", TEST, B=Bt, NH=NH, NKV=NKV, Tq=Tq, Tk=Tk, HS=HS, causal=True, masked=masked, window=w)
      for Bt, NH, NKV, Tq, Tk, HS, w in [(1, 1, 1, 1, 1, 1, 1), (2, 3, 3, 17, 17, 8, 4), (1, 2, 1, 130, 130, 17, 2),
                                         (1, 2, 2, 130, 130, 16, 70), (2, 4, 2, 65, 90, 8, 33),
                                         (1, 2, 1, 200, 200, 5, 64), (2, 4, 2, 3, 130, 17, 20),
                                         (1, 1, 1, 1, 5000, 64, 4500), (1, 2, 1, 1, 3000, 8, 300), (1, 2, 2, 20, 20, 8, 100)]
      for masked in (False, True)],
    # over a cache of halves: decoding rows, split keys, tiles; grouped heads, padding, windows
    *[case("attention_f16_cache", CHECK if (Bt, Tq, Tk) == (2, 1, 70) else TEST, B=Bt, NH=NH, NKV=NKV, Tq=Tq, Tk=Tk,
           HS=HS, causal=causal, masked=masked, window=w)
      for Bt, NH, NKV, Tq, Tk, HS, w in [(2, 4, 2, 1, 70, 17, 0), (1, 9, 3, 1, 3000, 64, 0), (1, 4, 1, 2, 1100, 256, 0),
                                         (2, 6, 2, 70, 130, 16, 0), (1, 2, 1, 1, 2000, 8, 700), (2, 4, 4, 65, 65, 63, 20)]
      for causal in (False, True) for masked in (False, True) if causal or not w],
    # one query (decoding) over a long cache with fewer heads than threads: the keys split across threads
    *[case("attention", TEST, B=1, NH=NH, NKV=1, Tq=Tq, Tk=Tk, HS=HS, causal=causal, masked=masked)
      for NH, Tq, Tk, HS in [(1, 1, 3000, 64), (1, 2, 1100, 17), (2, 1, 4099, 8)]
      for causal in (False, True) for masked in (False, True)],
    *[case("rmsnorm", CHECK if (N, Ch) == (17, 63) else TEST, N=N, C=Ch)
      for N, Ch in [(1, 1), (3, 17), (17, 63), (65, 130), (64, 576), (130, 1024)]],
    *[case("rope", CHECK if (Bt, Tt, NH, HS) == (2, 5, 3, 8) else TEST, B=Bt, T=Tt, NH=NH, HS=HS, P=P, base=base,
           interleaved=il)
      for Bt, Tt, NH, HS, P, base in [(1, 1, 1, 2, 1, 10000.0), (2, 5, 3, 8, 9, 10000.0), (1, 17, 9, 64, 40, 1e5),
                                      (3, 65, 2, 34, 100, 500000.0), (1, 130, 4, 128, 2048, 10000.0)]
      for il in (False, True)],
    *[case(gated, CHECK if n == 130 else TEST, n=n) for gated in ("swiglu", "geglu") for n in [1, 3, 17, 130, 70000]],
    # every GGUF type through every row path of its product: 1 row, 2-3 (the small-M kernels), 4, 5-8, 9-16 (the
    # batch kernel's lane groupings, which differ by ISA) and past 16 (widened GEMM); OC not a multiple of 4 or
    # of the batch kernel's channel block; IC one, a few and many blocks (float types: widths that are not a
    # multiple of 16; the larger products run threaded; 1 row of 15,429 outputs: the few-row kernels' chunks of
    # rows across the threads, the last chunk short)
    *[case("matmul_quantized", CHECK if (N, qtype) == (3, "Q4_1") else TEST, N=N, IC=QUANT_IC[qtype][k], OC=OC,
           qtype=qtype)
      for qtype in QUANT_TYPES
      for N, k, OC in [(1, 0, 1), (2, 1, 7), (3, 2, 67), (4, 0, 19), (5, 1, 40), (7, 2, 33), (8, 0, 45),
                       (9, 1, 33), (12, 2, 70), (13, 0, 23), (16, 1, 70), (17, 0, 9), (70, 2, 66),
                       (1, 0, 15429)]],
    # int8 activations: every integer block type, one row (decode), a few (a batched step), 16 and past it (prefill);
    # from 4 rows the VNNI panels (32 outputs: 40 and 66 end in part of one), tiles of 4 rows (5, 7, 70: 1, 3, 2 left)
    *[case("matmul_quantized_int8", CHECK if (N, qtype) == (3, "Q4_1") else TEST, N=N, IC=QUANT_IC[qtype][k], OC=OC,
           qtype=qtype)
      for qtype in QUANT_TYPES if qtype not in ("F32", "F16", "BF16")
      for N, k, OC in [(1, 0, 1), (2, 1, 7), (3, 2, 67), (5, 1, 40), (7, 0, 33), (16, 1, 70), (17, 0, 9),
                       (70, 2, 66)]],
    # a grammar's mask: rows 1..17, V and the tokenizer's vocab not multiples of 32 (the last word in part) or of
    # 512 (AVX-512's 16-bit steps), vocab < V (a padded head), SmolLM2's and Gemma 3's vocabularies
    *[case("mask_logits", CHECK if (N, V) == (3, 100) else TEST, N=N, V=V, vocab=vocab)
      for N, V, vocab in [(1, 1, 1), (1, 31, 31), (2, 32, 0), (3, 100, 65), (7, 520, 520), (16, 1000, 999),
                          (17, 4099, 4097), (16, 49152, 49152), (2, 262144, 262144), (5, 262272, 262145)]],
    *[case("adamw", CHECK if n == 130 else TEST, tol=1e-5, n=n) for n in [1, 17, 130, 100001]],
    *[case("sum_squares", CHECK if n == 130 else TEST, tol=1e-6, n=n) for n in [0, 1, 17, 130, 1000003]],
    # search's Hamming candidates: vector tails (N not a multiple of 8), one row, n past N, words past 31 (AVX2's
    # byte counts widened twice), several queries (sharing a read; past 16: two reads), the threaded path (chunks of
    # 16,384 rows), ties crowding the n-th distance
    *[case("hamming_candidates", CHECK if (N, W) == (1000, 6) else TEST, N=N, W=W, Q=Q, take=k, ties=t)
      for N, W, Q, k, t in [(1, 1, 1, 1, False), (7, 1, 1, 3, False), (100, 1, 2, 10, False),
                            (1000, 6, 3, 50, False), (70001, 6, 1, 100, False), (5000, 2, 1, 6000, False),
                            (33, 40, 2, 5, False), (65537, 1, 2, 1, False), (40000, 6, 18, 200, False),
                            (3001, 6, 2, 10, True), (50000, 2, 1, 7, True)]],
    # ... and over int8 rows: D past and short of the vector widths (16, 32), one row, n = N, several queries (past
    # 16: two reads), the threaded path (chunks of 8,192 rows), ties at the n-th score, NaN scales
    *[case("int8_candidates", CHECK if (N, D) == (1000, 48) else TEST, N=N, D=D, Q=Q, take=k, ties=t, nan=nan)
      for N, D, Q, k, t, nan in [(1, 1, 1, 1, False, False), (7, 3, 1, 7, False, False), (100, 33, 2, 10, False, True),
                                 (1000, 48, 3, 50, False, False), (30001, 384, 1, 100, False, False),
                                 (20000, 17, 18, 30, False, False), (3001, 40, 2, 10, True, False),
                                 (20000, 64, 1, 1000, True, True)]],
    # the benchmark's shapes: GPT-2 small's products and rows (N = B * T = 1024 or 8192 tokens), decode (N = 1)
    *[case("matmul", BENCH, N=N, IC=IC, OC=OC)
      for N, IC, OC in [(1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768), (1024, 768, 50304), (1, 768, 3072)]],
    *[case("matmul_bf16_weights", BENCH, N=N, IC=IC, OC=OC) for N, IC, OC in [(1, 768, 3072), (1024, 768, 768)]],
    *[case("matmul_int8_weights", BENCH, N=N, IC=IC, OC=OC) for N, IC, OC in [(1, 768, 3072), (1024, 768, 768)]],
    *[case("matmul", BENCH, N=N, IC=IC, OC=OC, precision="bfloat16")
      for N, IC, OC in [(1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768), (4096, 384, 1536)]],
    case("layernorm", BENCH, N=8192, C=768),
    case("gelu", BENCH, n=8192 * 768, approximate="tanh"),
    case("gelu", BENCH, n=8192 * 768, approximate="none"),
    case("softmax", BENCH, N=8192, C=768),
    case("crossentropy", BENCH, N=8192, V=768, ignored=False),
    case("crossentropy", BENCH, N=1024, V=50304, ignored=False),
    case("embedding", BENCH, N=8192, V=50304, C=768),
    *[case("attention", BENCH, B=4, NH=12, Tq=Tt, Tk=Tt, HS=64, causal=True) for Tt in (128, 512, 1024)],
    case("adamw", BENCH, n=124_000_000, steps=1),
    # SmolLM2-135M's shapes: decode products on Q4_1 weights (and the Q8_0 tied head), prefill of 512 tokens
    *[case("matmul_quantized", BENCH, N=N, IC=IC, OC=OC, qtype=qt)
      for N, IC, OC, qt in [(1, 576, 1536, "Q4_1"), (1, 1536, 576, "Q4_1"), (1, 576, 49152, "Q8_0"),
                            (512, 576, 1536, "Q4_1"), (1, 512, 1536, "Q4_K")]],
    *[case("matmul_quantized_int8", BENCH, N=N, IC=IC, OC=OC, qtype=qt)
      for N, IC, OC, qt in [(1, 576, 1536, "Q4_1"), (1, 1536, 576, "Q4_1"), (1, 576, 49152, "Q8_0"),
                            (16, 576, 1536, "Q4_1"), (512, 576, 1536, "Q4_1"), (1, 512, 1536, "Q4_K")]],
    # the other types of a Q4_K_M / Q5_K_M file, decoding one row and a batch of 8
    *[case("matmul_quantized", BENCH, N=N, IC=512, OC=1536, qtype=qt)
      for qt in ("Q5_0", "Q3_K", "Q5_K", "Q6_K", "IQ4_XS") for N in (1, 8)],
    # LoRA's backward through SmolLM2-135M's frozen products (256 rows), each form against the float32 widening
    *[case("matmul_dinp", BENCH, N=256, IC=IC, OC=OC, weight=kind)
      for IC, OC in [(576, 1536), (1536, 576)] for kind in ("float32", "bfloat16", "int8", "Q4_1", "Q4_K", "Q8_0")
      if kind not in BLOCK_LAYOUT or IC % BLOCK_LAYOUT[kind][0] == 0],  # (Q4_K: IC of whole 256-value blocks)
    *[case("mask_logits", BENCH, N=16, V=V) for V in (49152, 262144)],  # (16 constrained rows of a step)
    case("rmsnorm", BENCH, N=8192, C=576),
    case("hamming_candidates", BENCH, N=1_000_000, W=6, Q=1, take=1000),  # (1M rows of 384 dims, top 10 x 100)
    case("int8_candidates", BENCH, N=1_000_000, D=384, Q=1, take=100),  # (1M rows of 384 dims, top 10 x 10)
    case("swiglu", BENCH, n=512 * 1536),
    case("geglu", BENCH, n=512 * 1536),
    case("rope", BENCH, B=1, T=512, NH=9, HS=64, P=2048),
    *[case("attention", BENCH, B=1, NH=9, NKV=3, Tq=Tt, Tk=Tt, HS=64, causal=True) for Tt in (512,)],
    # one sequence decoding over 1,024 cached keys: SmolLM2's heads (9 over 3) and Gemma 3 270M's (4 over 1)
    *[case(op, BENCH, B=1, NH=NH, NKV=NKV, Tq=1, Tk=1024, HS=HS, causal=True)
      for op in ("attention", "attention_f16_cache") for NH, NKV, HS in [(9, 3, 64), (4, 1, 256)]],
]


def cases(tag: str) -> list:
    return [c for c in CASES if tag in c.tags]
