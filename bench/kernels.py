"""Every pytransformer kernel against NumPy and PyTorch, in one run, at 1 and 2 threads.

    python bench/kernels.py [--threads 1 2] [--quick] [--only matmul,attention] [--json out.json]
    python bench/kernels.py --isa avx2 --only matmul   # all three held to AVX2 (OpenBLAS Haswell kernels)

Threads are pinned for all three (pytransformer.set_num_threads, torch.set_num_threads, threadpoolctl for
NumPy's BLAS); each number is the median over repeats after warm-up. Ratios are peer time / our time, so
> 1 means pytransformer is faster. If OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set, the script re-executes
itself without them (they slow a current NumPy) and says which OpenBLAS kernel NumPy then runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

# --isa avx2: every library held to AVX2 (ours via PYTRANSFORMER_ISA, OpenBLAS's Haswell kernels, torch's ATen and
# MKL), set before any of them loads
if "--isa" in sys.argv and "PYTRANSFORMER_ISA" not in os.environ:
    isa = sys.argv[sys.argv.index("--isa") + 1]
    env = dict(os.environ, PYTRANSFORMER_ISA=isa)
    if isa == "avx2":
        env.update(OPENBLAS_CORETYPE="Haswell", ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    os.execve(sys.executable, [sys.executable, *sys.argv, "--keep-openblas-env"], env)

if any(k in os.environ for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")) and "--keep-openblas-env" not in sys.argv:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import numpy as np  # noqa: E402

import pytransformer  # noqa: E402
from pytransformer import ops  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the table then has no torch column
    torch = None
try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None


def median_time(fn, min_time=0.25, min_reps=5, max_reps=200, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def f32(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


# --- cases: each returns (work, unit, {"ours": fn, "numpy": fn, "torch": fn}) ---------------------------------


def case_matmul_forward(rng, N, IC, OC):
    x, w, b = f32(rng, N, IC), f32(rng, OC, IC), f32(rng, OC)
    out = np.empty((N, OC), np.float32)
    fns = {"ours": lambda: ops.matmul_forward(x, w, b, out=out),
           "numpy": lambda: np.add(np.matmul(x, w.T, out=out), b, out=out)}
    if torch:
        tx, tw, tb = map(torch.from_numpy, (x, w, b))
        fns["torch"] = lambda: F.linear(tx, tw, tb)
    return 2.0 * N * IC * OC, "GFLOP/s", fns


def case_matmul_backward(rng, N, IC, OC):
    x, w, g = f32(rng, N, IC), f32(rng, OC, IC), f32(rng, N, OC)
    dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros(OC, np.float32)

    def numpy_bwd():
        np.matmul(g, w, out=dx)
        dw[...] += g.T @ x
        db[...] += g.sum(0)

    fns = {"ours": lambda: ops.matmul_backward(g, x, w, dinp=dx, dweight=dw, dbias=db), "numpy": numpy_bwd}
    if torch:
        tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, np.zeros(OC, np.float32)))
        ty = F.linear(tx, tw, tb)
        tg = torch.from_numpy(g)
        fns["torch"] = lambda: torch.autograd.grad(ty, (tx, tw, tb), tg, retain_graph=True)
    return 4.0 * N * IC * OC, "GFLOP/s", fns


def _in_bf16(fn):
    """fn run with pytransformer's bfloat16 matmul precision (AMX), restoring the setting after."""
    def run():
        with pytransformer.matmul_precision("bfloat16"):
            return fn()
    return run


def case_matmul_bf16_forward(rng, N, IC, OC):
    """bf16 products (fp32 in and out, inputs rounded to bf16): ours on AMX vs torch under autocast(bfloat16),
    which also converts the fp32 operands on every call. NumPy has no bf16 matmul."""
    x, w, b = f32(rng, N, IC), f32(rng, OC, IC), f32(rng, OC)
    out = np.empty((N, OC), np.float32)
    fns = {"ours": _in_bf16(lambda: ops.matmul_forward(x, w, b, out=out))}
    if torch:
        tx, tw, tb = map(torch.from_numpy, (x, w, b))

        def torch_fwd():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return F.linear(tx, tw, tb)
        fns["torch"] = torch_fwd
    return 2.0 * N * IC * OC, "GFLOP/s", fns


def case_matmul_bf16_backward(rng, N, IC, OC):
    x, w, g = f32(rng, N, IC), f32(rng, OC, IC), f32(rng, N, OC)
    dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros(OC, np.float32)
    fns = {"ours": _in_bf16(lambda: ops.matmul_backward(g, x, w, dinp=dx, dweight=dw, dbias=db))}
    if torch:
        tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, np.zeros(OC, np.float32)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ty = F.linear(tx, tw, tb)
        tg = torch.from_numpy(g).bfloat16()
        fns["torch"] = lambda: torch.autograd.grad(ty, (tx, tw, tb), tg, retain_graph=True)
    return 4.0 * N * IC * OC, "GFLOP/s", fns


def case_layernorm_forward(rng, N, C):
    x, w, b = f32(rng, N, C), f32(rng, C), f32(rng, C)
    out, mean, rstd = np.empty_like(x), np.empty(N, np.float32), np.empty(N, np.float32)

    def numpy_ln():
        mu = x.mean(-1, keepdims=True)
        xc = x - mu
        rs = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5)
        return xc * rs * w + b

    fns = {"ours": lambda: ops.layernorm_forward(x, w, b, out=out, mean=mean, rstd=rstd), "numpy": numpy_ln}
    if torch:
        tx, tw, tb = map(torch.from_numpy, (x, w, b))
        fns["torch"] = lambda: F.layer_norm(tx, (C,), tw, tb, 1e-5)
    return 2.0 * N * C * 4, "GB/s", fns  # read x, write y


def case_layernorm_backward(rng, N, C):
    x, w, b, g = f32(rng, N, C), f32(rng, C), f32(rng, C), f32(rng, N, C)
    _, mean, rstd = ops.layernorm_forward(x, w, b)
    dx, dw, db = np.empty_like(x), np.zeros(C, np.float32), np.zeros(C, np.float32)

    def numpy_ln_bwd():
        norm = (x - mean[:, None]) * rstd[:, None]
        dn = g * w
        dw[...] += (g * norm).sum(0)
        db[...] += g.sum(0)
        return rstd[:, None] * (dn - dn.mean(-1, keepdims=True) - norm * (dn * norm).mean(-1, keepdims=True))

    fns = {"ours": lambda: ops.layernorm_backward(g, x, w, mean, rstd, dinp=dx, dweight=dw, dbias=db),
           "numpy": numpy_ln_bwd}
    if torch:
        tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
        ty = F.layer_norm(tx, (C,), tw, tb, 1e-5)
        tg = torch.from_numpy(g)
        fns["torch"] = lambda: torch.autograd.grad(ty, (tx, tw, tb), tg, retain_graph=True)
    return 3.0 * N * C * 4, "GB/s", fns  # read x, dout; write dinp


def case_gelu_forward(rng, N, C, approximate="tanh"):
    x = f32(rng, N, C)
    out = np.empty_like(x)
    c = np.float32(np.sqrt(2 / np.pi))
    fns = {"ours": lambda: ops.gelu_forward(x, approximate, out=out)}
    if approximate == "tanh":
        fns["numpy"] = lambda: 0.5 * x * (1 + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))
    if torch:
        tx = torch.from_numpy(x)
        fns["torch"] = lambda: F.gelu(tx, approximate=approximate)
    return 2.0 * N * C * 4, "GB/s", fns


def case_gelu_backward(rng, N, C, approximate="tanh"):
    x, g = f32(rng, N, C), f32(rng, N, C)
    dx = np.empty_like(x)
    c = np.float32(np.sqrt(2 / np.pi))

    def numpy_gelu_bwd():
        u = c * (x + np.float32(0.044715) * x * x * x)
        t = np.tanh(u)
        return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + np.float32(3 * 0.044715) * x * x))

    fns = {"ours": lambda: ops.gelu_backward(g, x, approximate, dinp=dx)}
    if approximate == "tanh":
        fns["numpy"] = numpy_gelu_bwd
    if torch:
        tx = torch.from_numpy(x.copy()).requires_grad_()
        ty = F.gelu(tx, approximate=approximate)
        tg = torch.from_numpy(g)
        fns["torch"] = lambda: torch.autograd.grad(ty, (tx,), tg, retain_graph=True)
    return 3.0 * N * C * 4, "GB/s", fns


def case_softmax_forward(rng, N, C):
    x = f32(rng, N, C)
    out = np.empty_like(x)

    def numpy_softmax():
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    fns = {"ours": lambda: ops.softmax_forward(x, out=out), "numpy": numpy_softmax}
    if torch:
        tx = torch.from_numpy(x)
        fns["torch"] = lambda: torch.softmax(tx, -1)
    return 2.0 * N * C * 4, "GB/s", fns


def case_softmax_backward(rng, N, C):
    y, g = ops.softmax_forward(f32(rng, N, C)), f32(rng, N, C)
    dx = np.empty_like(y)
    fns = {"ours": lambda: ops.softmax_backward(g, y, dinp=dx),
           "numpy": lambda: y * (g - (g * y).sum(-1, keepdims=True))}
    if torch:
        tx = torch.from_numpy(f32(rng, N, C)).requires_grad_()
        ty = torch.softmax(tx, -1)
        tg = torch.from_numpy(g)
        fns["torch"] = lambda: torch.autograd.grad(ty, (tx,), tg, retain_graph=True)
    return 3.0 * N * C * 4, "GB/s", fns


def case_crossentropy_forward(rng, N, V):
    x, t = f32(rng, N, V), rng.integers(0, V, N)
    losses, lse = np.empty(N, np.float32), np.empty(N, np.float32)

    def numpy_ce():
        m = x.max(-1, keepdims=True)
        l = np.log(np.exp(x - m).sum(-1)) + m[:, 0]
        return (l - x[np.arange(N), t]).mean()

    fns = {"ours": lambda: ops.crossentropy_forward(x, t, losses=losses, lse=lse), "numpy": numpy_ce}
    if torch:
        tx, tt = torch.from_numpy(x), torch.from_numpy(t)
        fns["torch"] = lambda: F.cross_entropy(tx, tt)
    return 1.0 * N * V * 4, "GB/s", fns


def case_crossentropy_backward(rng, N, V):
    x, t = f32(rng, N, V), rng.integers(0, V, N)
    _, _, lse = ops.crossentropy_forward(x, t)
    dx = np.empty_like(x)

    def numpy_ce_bwd():
        p = np.exp(x - lse[:, None])
        p[np.arange(N), t] -= 1
        return p / N

    fns = {"ours": lambda: ops.crossentropy_backward(x, t, lse, dlogits=dx), "numpy": numpy_ce_bwd}
    if torch:
        tx, tt = torch.from_numpy(x.copy()).requires_grad_(), torch.from_numpy(t)
        tl = F.cross_entropy(tx, tt)
        fns["torch"] = lambda: torch.autograd.grad(tl, (tx,), retain_graph=True)
    return 2.0 * N * V * 4, "GB/s", fns


def case_embedding_forward(rng, N, V, C):
    table, ids = f32(rng, V, C), rng.integers(0, V, N)
    out = np.empty((N, C), np.float32)
    fns = {"ours": lambda: ops.embedding_forward(ids, table, out=out),
           "numpy": lambda: np.take(table, ids, axis=0, out=out)}
    if torch:
        tt, ti = torch.from_numpy(table), torch.from_numpy(ids)
        fns["torch"] = lambda: F.embedding(ti, tt)
    return 2.0 * N * C * 4, "GB/s", fns


def case_embedding_backward(rng, N, V, C):
    g, ids = f32(rng, N, C), rng.integers(0, V, N)
    dtable = np.zeros((V, C), np.float32)
    fns = {"ours": lambda: ops.embedding_backward(g, ids, V, dtable=dtable),
           "numpy": lambda: np.add.at(dtable, ids, g)}
    if torch:
        tdt, ti, tg = torch.from_numpy(dtable.copy()), torch.from_numpy(ids), torch.from_numpy(g)
        fns["torch"] = lambda: tdt.index_add_(0, ti, tg)
    return 3.0 * N * C * 4, "GB/s", fns


def case_attention(rng, B, NH, T, HS, backward):
    q, k, v, g = (f32(rng, B, NH, T, HS) for _ in range(4))
    out, lse = np.empty_like(q), np.empty((B, NH, T), np.float32)
    dq, dk, dv = np.empty_like(q), np.empty_like(q), np.empty_like(q)

    def ours():
        ops.attention_forward(q, k, v, True, out=out, lse=lse)
        if backward:
            ops.attention_backward(g, q, k, v, out, lse, True, dq=dq, dk=dk, dv=dv)

    tri = np.triu(np.ones((T, T), bool), 1)

    def numpy_attention():
        s = q @ k.swapaxes(-1, -2) * np.float32(1 / np.sqrt(HS))
        s[..., tri] = -np.inf
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        o = p @ v
        if backward:
            dvn = p.swapaxes(-1, -2) @ g
            dp = g @ v.swapaxes(-1, -2)
            ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * np.float32(1 / np.sqrt(HS))
            return o, ds @ k, ds.swapaxes(-1, -2) @ q, dvn
        return o

    fns = {"ours": ours, "numpy": numpy_attention}
    if torch:
        tq, tk, tv = (torch.from_numpy(a.copy()).requires_grad_(backward) for a in (q, k, v))
        tg = torch.from_numpy(g)

        def torch_attention():
            o = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
            if backward:
                torch.autograd.grad(o, (tq, tk, tv), tg)

        fns["torch"] = torch_attention if backward else (lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=True))
    products = 6 if backward else 2  # QK^T and PV forward; dV, dP, dQ, dK backward (recompute not counted)
    return products * 2.0 * B * NH * T * T * HS / 2, "GFLOP/s", fns


def case_adamw(rng, n):
    p, g = f32(rng, n), f32(rng, n) * np.float32(1e-3)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    state = {"step": 0}

    def ours():
        state["step"] += 1
        ops.adamw_step(p, m, v, g, 1e-4, 0.9, 0.95, 1e-8, 0.1, state["step"])

    pn, mn, vn = p.copy(), m.copy(), v.copy()
    tmp = np.empty_like(pn)

    def numpy_adamw():
        np.multiply(pn, np.float32(1 - 1e-5), out=pn)
        np.multiply(mn, np.float32(0.9), out=mn)
        mn[...] += np.float32(0.1) * g
        np.multiply(vn, np.float32(0.95), out=vn)
        np.multiply(g, g, out=tmp)
        np.multiply(tmp, np.float32(0.05), out=tmp)
        np.add(vn, tmp, out=vn)
        np.sqrt(vn, out=tmp)
        np.add(tmp, np.float32(1e-8), out=tmp)
        np.divide(mn, tmp, out=tmp)
        np.multiply(tmp, np.float32(1e-4), out=tmp)
        np.subtract(pn, tmp, out=pn)

    fns = {"ours": ours, "numpy": numpy_adamw}
    if torch:
        tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
        tp.grad = torch.from_numpy(g)
        try:
            opt = torch.optim.AdamW([tp], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
            opt.step()
        except (RuntimeError, TypeError):
            opt = torch.optim.AdamW([tp], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
        fns["torch"] = opt.step
    return 7.0 * n * 4, "GB/s", fns  # read p, g, m, v; write p, m, v


CASES = [  # (group, label, factory, args)
    *[("matmul", f"matmul_forward N={N} {IC}x{OC}", case_matmul_forward, (N, IC, OC))
      for N, IC, OC in [(1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768), (1024, 768, 50304), (1, 768, 3072)]],
    *[("matmul", f"matmul_backward N={N} {IC}x{OC}", case_matmul_backward, (N, IC, OC))
      for N, IC, OC in [(1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768), (1024, 768, 50304)]],
    *[("matmul_bf16", f"matmul_bf16_forward N={N} {IC}x{OC}", case_matmul_bf16_forward, (N, IC, OC))
      for N, IC, OC in [(1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768), (4096, 384, 1536)]],
    *[("matmul_bf16", f"matmul_bf16_backward N={N} {IC}x{OC}", case_matmul_bf16_backward, (N, IC, OC))
      for N, IC, OC in [(1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768), (4096, 384, 1536)]],
    ("rowops", "layernorm_forward 8192x768", case_layernorm_forward, (8192, 768)),
    ("rowops", "layernorm_backward 8192x768", case_layernorm_backward, (8192, 768)),
    ("rowops", "gelu_forward tanh 8192x768", case_gelu_forward, (8192, 768)),
    ("rowops", "gelu_backward tanh 8192x768", case_gelu_backward, (8192, 768)),
    ("rowops", "gelu_forward erf 8192x768", case_gelu_forward, (8192, 768, "none")),
    ("rowops", "softmax_forward 8192x768", case_softmax_forward, (8192, 768)),
    ("rowops", "softmax_backward 8192x768", case_softmax_backward, (8192, 768)),
    ("rowops", "crossentropy_forward 8192x768", case_crossentropy_forward, (8192, 768)),
    ("rowops", "crossentropy_backward 8192x768", case_crossentropy_backward, (8192, 768)),
    ("rowops", "crossentropy_forward 1024x50304", case_crossentropy_forward, (1024, 50304)),
    ("rowops", "crossentropy_backward 1024x50304", case_crossentropy_backward, (1024, 50304)),
    ("rowops", "embedding_forward 8192 of 50304x768", case_embedding_forward, (8192, 50304, 768)),
    ("rowops", "embedding_backward 8192 of 50304x768", case_embedding_backward, (8192, 50304, 768)),
    *[("attention", f"attention_forward causal B=4 NH=12 T={T} HS=64", case_attention, (4, 12, T, 64, False))
      for T in (128, 512, 1024)],
    *[("attention", f"attention_fwd+bwd causal B=4 NH=12 T={T} HS=64", case_attention, (4, 12, T, 64, True))
      for T in (128, 512, 1024)],
    ("adamw", "adamw_step 124M params", case_adamw, (124_000_000,)),
]


def attention_extra_bytes(B, NH, T, HS, nthreads):
    """Scratch the fused kernel holds per call (cpp/cpu/attention.cpp: BK = BQ = 64, HS padded to HSP)."""
    BK = BQ = 64
    HSP = (HS + 15) // 16 * 16
    fwd = (2 * HS * BQ + BK * BQ) * 4 * nthreads
    bwd = (3 * T * HSP + T + 2 * HS * BK + 3 * BK * HSP + 2 * BQ * BK) * 4 * nthreads
    return fwd, bwd


def machine_header():
    info = pytransformer.cpu_info()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = "unknown"
    if threadpoolctl:
        blas = "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture', '')}".strip()
                         for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas") or "none"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "isa": info["isa"], "available_isas": info["available_isas"],
        "openmp": info["openmp"], "pytransformer": pytransformer.__version__, "numpy": np.__version__,
        "numpy_blas": blas, "torch": torch.__version__ if torch else None, "python": platform.python_version(),
    }


class pinned_threads:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        pytransformer.set_num_threads(self.n)
        if torch:
            torch.set_num_threads(self.n)
        self.limits = threadpoolctl.threadpool_limits(self.n, user_api="blas") if threadpoolctl else None
        return self

    def __exit__(self, *exc):
        if self.limits:
            self.limits.unregister()


def limit_of(row, limits):
    """The machine limit a kernel is measured against: FMA peak of the active ISA for GFLOP/s kernels (the AMX
    bf16 tile peak for the bf16 matmuls), the L3-resident bandwidth for GB/s kernels (their arrays are 25 MB or less) -- at the same thread count."""
    if limits is None:
        return None
    if row["group"] == "matmul_bf16":
        return limits.get("amx_bf16", {}).get(row["threads"])
    if row["unit"] == "GFLOP/s":
        return limits["fma"].get(pytransformer.cpu_info()["isa"], {}).get(row["threads"])
    key = "bandwidth_dram" if "124M" in row["kernel"] or "50304" in row["kernel"] else "bandwidth_l3"
    return limits[key].get(row["threads"])


def run(threads, only=None, quick=False, limits=None):
    header = machine_header()
    rows = []
    for group, label, factory, args in CASES:
        if only and group not in only and not any(o in label for o in only):
            continue
        if group == "matmul_bf16" and not pytransformer.cpu_info()["amx_bf16"]:
            continue
        if quick and ("50304" in label or "124M" in label or "T=1024" in label):
            continue
        rng = np.random.default_rng(0)
        work, unit, fns = factory(rng, *args)
        for n in threads:
            with pinned_threads(n):
                times = {name: median_time(fn) for name, fn in fns.items()}
            ours = times["ours"]
            row = {"kernel": label, "group": group, "threads": n, "unit": unit,
                   "ms": {k: v * 1e3 for k, v in times.items()},
                   "rate": work / ours / 1e9,
                   "vs_numpy": times["numpy"] / ours if "numpy" in times else None,
                   "vs_torch": times["torch"] / ours if "torch" in times else None}
            lim = limit_of(row, limits)
            row["pct_limit"] = 100.0 * row["rate"] / lim if lim else None
            if group == "attention":
                B, NH, T, HS, bwd = args
                f, b = attention_extra_bytes(B, NH, T, HS, n)
                row["extra_bytes"] = f + (b if bwd else 0)
            rows.append(row)
            print_row(row)
            sys.stdout.flush()
        del fns
    return header, rows


def print_header(header):
    print(f"# pytransformer {header['pytransformer']}  isa={header['isa']} (available: "
          f"{', '.join(header['available_isas'])})  openmp={header['openmp']}")
    print(f"# cpu: {header['cpu']}, {header['cores']} cores")
    print(f"# numpy {header['numpy']} ({header['numpy_blas']}), torch {header['torch']}, python {header['python']}")
    print(f"{'kernel':<46} {'thr':>3} {'ours ms':>9} {'numpy ms':>9} {'torch ms':>9} {'rate':>15} "
          f"{'%limit':>6} {'x numpy':>8} {'x torch':>8}")


def print_row(r):
    ms = r["ms"]
    fmt = lambda v: f"{v:9.3f}" if v is not None else f"{'-':>9}"
    ratio = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"
    extra = f"  scratch {r['extra_bytes'] / 1024:.0f} KiB" if "extra_bytes" in r else ""
    pct = f"{r['pct_limit']:5.0f}%" if r.get("pct_limit") is not None else f"{'-':>6}"
    print(f"{r['kernel']:<46} {r['threads']:>3} {fmt(ms['ours'])} {fmt(ms.get('numpy'))} {fmt(ms.get('torch'))} "
          f"{r['rate']:8.1f} {r['unit']:<6} {pct} {ratio(r['vs_numpy'])} {ratio(r['vs_torch'])}{extra}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only", default="",
                    help="comma-separated groups (matmul, matmul_bf16, rowops, attention, adamw) or names")
    ap.add_argument("--quick", action="store_true", help="skip the largest shapes")
    ap.add_argument("--json", default="bench/results/kernels.json", help="where to write the results")
    ap.add_argument("--keep-openblas-env", action="store_true", help="do not unset OPENBLAS_CORETYPE/L2_SIZE")
    ap.add_argument("--isa", choices=["baseline", "avx2", "avx512"],
                    help="our kernel variant; avx2 also holds OpenBLAS (Haswell), torch and MKL to AVX2")
    ap.add_argument("--plot", action="store_true", help="also draw bench/results/kernels.png (needs matplotlib)")
    ap.add_argument("--from-json", help="only plot the results of an earlier run")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        plot(saved["results"], os.path.splitext(args.from_json)[0] + ".png")
        return
    header = machine_header()
    print_header(header)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import limits as machine_limits

    lim = machine_limits.measure(args.threads)
    for isa, per in lim["fma"].items():
        print(f"# FMA peak {isa}: " + ", ".join(f"{n} thr {v:.0f} GFLOP/s" for n, v in per.items()))
    if lim.get("amx_bf16"):
        print("# AMX bf16 peak: " + ", ".join(f"{n} thr {v:.0f} GFLOP/s" for n, v in lim["amx_bf16"].items()))
    for key in ("bandwidth_l3", "bandwidth_dram"):
        print(f"# {key}: " + ", ".join(f"{n} thr {v:.1f} GB/s" for n, v in lim[key].items()))
    header["limits"] = lim
    header, rows = run(args.threads, [o for o in args.only.split(",") if o], args.quick, lim)
    header["limits"] = lim
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": header, "results": rows}, f, indent=1)
        print(f"# wrote {args.json}")
    if args.plot:
        plot(rows, os.path.splitext(args.json or "bench/results/kernels.json")[0] + ".png")


def plot(rows, path):
    """Per kernel and thread count: % of the machine limit, and the speed ratio to torch and to numpy."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# --plot needs matplotlib (pip install matplotlib)")
        return
    labels = [f"{r['kernel']} [{r['threads']}t]" for r in rows]
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(16, 0.28 * len(rows) + 2), sharey=True)
    axes[0].barh(y, [r.get("pct_limit") or 0 for r in rows], color="tab:blue")
    axes[0].set_xlabel("% of machine limit (FMA peak or bandwidth)")
    axes[0].axvline(85, color="gray", ls="--", lw=0.8)
    axes[1].barh(y - 0.2, [r.get("vs_torch") or 0 for r in rows], height=0.4, label="vs torch")
    axes[1].barh(y + 0.2, [min(r.get("vs_numpy") or 0, 10) for r in rows], height=0.4, label="vs numpy (capped 10)")
    axes[1].axvline(1.0, color="black", lw=0.8)
    axes[1].set_xlabel("speed ratio (peer time / our time)")
    axes[1].legend()
    axes[0].set_yticks(y, labels, fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
