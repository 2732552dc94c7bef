"""Every pytransformer kernel against NumPy and PyTorch, in one run, at 1 and 2 threads: the op-case registry's
"bench" cases (pytransformer/opcases.py gives the inputs, our calls and the work; the peers are below).

    python bench/kernel_bench.py [--threads 1 2] [--quick] [--only matmul,attention] [--json out.json]
    python bench/kernel_bench.py --isa avx2 --only matmul   # all three held to AVX2 (OpenBLAS Haswell kernels)
    python bench/kernel_bench.py --device cuda              # the CUDA kernels against torch on the same GPU

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

# threads pinned means pinned: no load-adaptive team size while timing against peers that have none
os.environ.setdefault("PYTRANSFORMER_ADAPTIVE_THREADS", "0")
from plotting import pyplot  # noqa: E402
from timing import write_json  # noqa: E402
import pytransformer  # noqa: E402
from pytransformer import opcases, ops  # noqa: E402

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


# --- peers: for a registry case (pytransformer/opcases.py, tag "bench") and its inputs, NumPy's and PyTorch's
# version of each timed call, on the same arrays. Our side, the inputs and the work come from the registry. ------


def peers_matmul(case, x, direction):
    inp, w, b, g = x["inp"], x["weight"], x["bias"], x["dout"]
    if case.o.get("precision") == "bfloat16":  # NumPy has no bf16 matmul; torch's autocast converts every call
        if not torch:
            return {}
        tx, tw, tb = (torch.from_numpy(a).requires_grad_(direction == "backward") for a in (inp, w, b))
        if direction == "forward":
            def torch_fwd():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return F.linear(tx, tw, tb)
            return {"torch": torch_fwd}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ty = F.linear(tx, tw, tb)
        tg = torch.from_numpy(g).bfloat16()
        return {"torch": lambda: torch.autograd.grad(ty, (tx, tw, tb), tg, retain_graph=True)}
    if direction == "forward":
        out = np.empty(g.shape, np.float32)
        fns = {"numpy": lambda: np.add(np.matmul(inp, w.T, out=out), b, out=out)}
        if torch:
            tx, tw, tb = map(torch.from_numpy, (inp, w, b))
            fns["torch"] = lambda: F.linear(tx, tw, tb)
        return fns
    dx, dw, db = np.empty_like(inp), np.zeros_like(w), np.zeros_like(b)

    def numpy_bwd():
        np.matmul(g, w, out=dx)
        dw[...] += g.T @ inp
        db[...] += g.sum(0)

    fns = {"numpy": numpy_bwd}
    if torch:
        tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (inp, w, b))
        ty, tg = F.linear(tx, tw, tb), torch.from_numpy(g)
        fns["torch"] = lambda: torch.autograd.grad(ty, (tx, tw, tb), tg, retain_graph=True)
    return fns


def peers_layernorm(case, x, direction):
    inp, w, b, g = x["inp"], x["weight"], x["bias"], x["dout"]
    C = inp.shape[1]
    if direction == "forward":
        def numpy_ln():
            mu = inp.mean(-1, keepdims=True)
            xc = inp - mu
            rs = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5)
            return xc * rs * w + b

        fns = {"numpy": numpy_ln}
        if torch:
            tx, tw, tb = map(torch.from_numpy, (inp, w, b))
            fns["torch"] = lambda: F.layer_norm(tx, (C,), tw, tb, 1e-5)
        return fns
    _, mean, rstd = ops.layernorm_forward(inp, w, b)
    dw, db = np.zeros_like(w), np.zeros_like(b)

    def numpy_ln_bwd():
        norm = (inp - mean[:, None]) * rstd[:, None]
        dn = g * w
        dw[...] += (g * norm).sum(0)
        db[...] += g.sum(0)
        return rstd[:, None] * (dn - dn.mean(-1, keepdims=True) - norm * (dn * norm).mean(-1, keepdims=True))

    fns = {"numpy": numpy_ln_bwd}
    if torch:
        tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (inp, w, b))
        ty, tg = F.layer_norm(tx, (C,), tw, tb, 1e-5), torch.from_numpy(g)
        fns["torch"] = lambda: torch.autograd.grad(ty, (tx, tw, tb), tg, retain_graph=True)
    return fns


def peers_gelu(case, x, direction):
    inp, g, approximate = x["inp"], x["dout"], case.o["approximate"]
    c = np.float32(np.sqrt(2 / np.pi))
    fns = {}
    if approximate == "tanh" and direction == "forward":
        fns["numpy"] = lambda: 0.5 * inp * (1 + np.tanh(c * (inp + np.float32(0.044715) * inp * inp * inp)))
    if approximate == "tanh" and direction == "backward":
        def numpy_gelu_bwd():
            t = np.tanh(c * (inp + np.float32(0.044715) * inp * inp * inp))
            return g * (0.5 * (1 + t) + 0.5 * inp * (1 - t * t) * c * (1 + np.float32(3 * 0.044715) * inp * inp))
        fns["numpy"] = numpy_gelu_bwd
    if torch:
        if direction == "forward":
            tx = torch.from_numpy(inp)
            fns["torch"] = lambda: F.gelu(tx, approximate=approximate)
        else:
            tx = torch.from_numpy(inp.copy()).requires_grad_()
            ty, tg = F.gelu(tx, approximate=approximate), torch.from_numpy(g)
            fns["torch"] = lambda: torch.autograd.grad(ty, (tx,), tg, retain_graph=True)
    return fns


def peers_softmax(case, x, direction):
    inp, g = x["inp"], x["dout"]
    if direction == "forward":
        def numpy_softmax():
            e = np.exp(inp - inp.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)

        fns = {"numpy": numpy_softmax}
        if torch:
            tx = torch.from_numpy(inp)
            fns["torch"] = lambda: torch.softmax(tx, -1)
        return fns
    y = ops.softmax_forward(inp)
    fns = {"numpy": lambda: y * (g - (g * y).sum(-1, keepdims=True))}
    if torch:
        tx = torch.from_numpy(inp.copy()).requires_grad_()
        ty, tg = torch.softmax(tx, -1), torch.from_numpy(g)
        fns["torch"] = lambda: torch.autograd.grad(ty, (tx,), tg, retain_graph=True)
    return fns


def peers_crossentropy(case, x, direction):
    logits, t = x["logits"], x["targets"]
    N = len(t)
    if direction == "forward":
        def numpy_ce():
            m = logits.max(-1, keepdims=True)
            lse = np.log(np.exp(logits - m).sum(-1)) + m[:, 0]
            return (lse - logits[np.arange(N), t]).mean()

        fns = {"numpy": numpy_ce}
        if torch:
            tx, tt = torch.from_numpy(logits), torch.from_numpy(t)
            fns["torch"] = lambda: F.cross_entropy(tx, tt)
        return fns
    _, _, lse = ops.crossentropy_forward(logits, t)

    def numpy_ce_bwd():
        p = np.exp(logits - lse[:, None])
        p[np.arange(N), t] -= 1
        return p / N

    fns = {"numpy": numpy_ce_bwd}
    if torch:
        tx, tt = torch.from_numpy(logits.copy()).requires_grad_(), torch.from_numpy(t)
        tl = F.cross_entropy(tx, tt)
        fns["torch"] = lambda: torch.autograd.grad(tl, (tx,), retain_graph=True)
    return fns


def peers_embedding(case, x, direction):
    table, ids, g = x["table"], x["ids"], x["dout"]
    if direction == "forward":
        out = np.empty(g.shape, np.float32)
        fns = {"numpy": lambda: np.take(table, ids, axis=0, out=out)}
        if torch:
            tt, ti = torch.from_numpy(table), torch.from_numpy(ids)
            fns["torch"] = lambda: F.embedding(ti, tt)
        return fns
    dtable = np.zeros_like(table)
    fns = {"numpy": lambda: np.add.at(dtable, ids, g)}
    if torch:
        tdt, ti, tg = torch.from_numpy(dtable.copy()), torch.from_numpy(ids), torch.from_numpy(g)
        fns["torch"] = lambda: tdt.index_add_(0, ti, tg)
    return fns


def peers_attention(case, x, direction):
    q, k, v, g = x["q"], x["k"], x["v"], x["dout"]
    backward, HS, Tq, Tk = direction != "forward", q.shape[-1], q.shape[2], k.shape[2]
    tri = np.triu(np.ones((Tq, Tk), bool), 1 + Tk - Tq)  # (causal, bottom-right: a query sees the cache before it)
    k, v = (np.repeat(a, q.shape[1] // a.shape[1], 1) for a in (k, v))  # (grouped-query heads, as torch's enable_gqa)

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

    fns = {"numpy": numpy_attention}
    if torch:
        tq, tk, tv = (torch.from_numpy(a.copy()).requires_grad_(backward) for a in (q, k, v))
        tg = torch.from_numpy(g)

        causal = torch.from_numpy(~tri)

        def torch_attention():
            o = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=None if Tq == Tk else causal, is_causal=Tq == Tk)
            if backward:
                torch.autograd.grad(o, (tq, tk, tv), tg)

        fns["torch"] = torch_attention
    return fns


def peers_adamw(case, x, direction):
    p, g = x["params"].copy(), x["grads"][0] * np.float32(1e-3)
    m, v, tmp = np.zeros_like(p), np.zeros_like(p), np.empty_like(p)

    def numpy_adamw():
        np.multiply(p, np.float32(1 - 1e-5), out=p)
        np.multiply(m, np.float32(0.9), out=m)
        m[...] += np.float32(0.1) * g
        np.multiply(v, np.float32(0.95), out=v)
        np.multiply(g, g, out=tmp)
        np.multiply(tmp, np.float32(0.05), out=tmp)
        np.add(v, tmp, out=v)
        np.sqrt(v, out=tmp)
        np.add(tmp, np.float32(1e-8), out=tmp)
        np.divide(m, tmp, out=tmp)
        np.multiply(tmp, np.float32(1e-4), out=tmp)
        np.subtract(p, tmp, out=p)

    fns = {"numpy": numpy_adamw}
    if torch:
        tp = torch.nn.Parameter(torch.from_numpy(x["params"].copy()))
        tp.grad = torch.from_numpy(g)
        try:
            opt = torch.optim.AdamW([tp], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
            opt.step()
        except (RuntimeError, TypeError):
            opt = torch.optim.AdamW([tp], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
        fns["torch"] = opt.step
    return fns


def peers_matmul_bf16_weights(case, x, direction):
    """torch with the weight in bfloat16 and the activations in float32 casts per call (F.linear wants one dtype);
    the fair peer is its bf16 Linear on bf16 inputs, which rounds the activations too."""
    if not torch:
        return {}
    tw = torch.from_numpy(x["weight"].view(np.int16)).view(torch.bfloat16)
    tx, tb = torch.from_numpy(x["inp"]).bfloat16(), torch.from_numpy(x["bias"]).bfloat16()
    return {"torch": lambda: F.linear(tx, tw, tb)}


def peers_attention_f16_cache(case, x, direction):
    """The peers over float32 copies of the cache's rows in use (torch and NumPy keep a float32 cache)."""
    Tk = case.s["Tk"]
    return peers_attention(case, dict(x, k=x["k"][:, :, :Tk].astype(np.float32),
                                      v=x["v"][:, :, :Tk].astype(np.float32)), direction)


PEERS = {"matmul": peers_matmul, "matmul_bf16_weights": peers_matmul_bf16_weights, "layernorm": peers_layernorm, "gelu": peers_gelu, "softmax": peers_softmax,
         "crossentropy": peers_crossentropy, "embedding": peers_embedding, "attention": peers_attention,
         "attention_f16_cache": peers_attention_f16_cache,
         "adamw": peers_adamw}


def group_of(case):
    return "matmul_bf16" if case.o.get("precision") == "bfloat16" else case.spec.group


def label_of(case, direction):
    """e.g. "matmul_forward N=1024 IC=768 OC=768", "attention_fwd+bwd B=4 ... causal"."""
    head, _, rest = case.label.partition(" ")
    return f"{head}_{direction} {rest}".strip() if direction != "step" else case.label


def footprint(x):
    """Bytes of a case's input arrays: past the last-level cache, its limit is DRAM bandwidth."""
    arrays = [a for v in x.values() for a in (v if isinstance(v, list) else [v]) if isinstance(a, np.ndarray)]
    return sum(a.nbytes for a in arrays)


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
    bf16 tile peak for the bf16 matmuls, the integer dot product's peak for the int8-activation products), for GB/s
    kernels the L3-resident bandwidth when the inputs fit in 64 MB and the DRAM bandwidth past that -- at the same
    thread count."""
    if limits is None:
        return None
    if row["group"] == "matmul_bf16":
        return limits.get("amx_bf16", {}).get(row["threads"])
    if row["kernel"].startswith("matmul_quantized_int8") and row["unit"] == "GFLOP/s":
        return limits.get("int8", {}).get(row["threads"])
    if row["unit"] == "GFLOP/s":
        return limits["fma"].get(pytransformer.cpu_info()["isa"], {}).get(row["threads"])
    key = "bandwidth_dram" if row["bytes"] > 64 << 20 else "bandwidth_l3"
    return limits[key].get(row["threads"])


def run(threads, only=None, quick=False, limits=None):
    header = machine_header()
    rows = []
    for case in opcases.cases("bench"):
        group = group_of(case)
        wanted = lambda label: not only or group in only or any(o in label for o in only)  # noqa: E731
        if not any(wanted(label_of(case, d)) for d in ("forward", "backward", "fwd+bwd", "step")):
            continue
        if group == "matmul_bf16" and not pytransformer.cpu_info()["amx_bf16"]:
            continue
        if quick and ("50304" in case.label or "124000000" in case.label or "Tq=1024" in case.label):
            continue
        x = case.make(np.random.default_rng(0))
        nbytes = footprint(x)
        for direction, ours in case.calls(x).items():
            label = label_of(case, direction)
            if not wanted(label):
                continue
            fns = {"ours": ours, **PEERS.get(case.op, lambda *_: {})(case, x, direction)}
            work, unit = case.work(direction)
            for n in threads:
                with pinned_threads(n):
                    times = {name: median_time(fn) for name, fn in fns.items()}
                ours_t = times["ours"]
                row = {"kernel": label, "group": group, "threads": n, "unit": unit, "bytes": nbytes,
                       "ms": {k: v * 1e3 for k, v in times.items()},
                       "rate": work / ours_t / 1e9,
                       "vs_numpy": times["numpy"] / ours_t if "numpy" in times else None,
                       "vs_torch": times["torch"] / ours_t if "torch" in times else None}
                lim = limit_of(row, limits)
                row["pct_limit"] = 100.0 * row["rate"] / lim if lim else None
                if case.op == "attention":
                    s = case.s
                    f, b = attention_extra_bytes(s["B"], s["NH"], s["Tq"], s["HS"], n)
                    row["extra_bytes"] = f + (b if direction != "forward" else 0)
                rows.append(row)
                print_row(row)
                sys.stdout.flush()
            del fns
        del x
    return header, rows


# --- the CUDA kernels (--device cuda): the same registry cases on device arrays, against torch on the same GPU (the
# CPU peers' torch calls, their tensors made on the GPU); every call timed to its device synchronisation. ---------

CPU_ONLY = {"matmul_bf16_weights", "matmul_int8_weights", "matmul_quantized", "matmul_quantized_int8",
            "matmul_dinp"}  # (narrow weights' dinp: CPU kernels only)


def synced(fn, sync):
    def run():
        fn()
        sync()
    return run


class _TorchOnCuda:
    """Within it, torch.from_numpy gives GPU tensors, so the CPU peers above build their calls on the GPU."""

    def __enter__(self):
        self.real = torch.from_numpy
        torch.from_numpy = lambda a: self.real(a).cuda()

    def __exit__(self, *exc):
        torch.from_numpy = self.real


def run_cuda(only=None, quick=False):
    from pytransformer import cuda

    if not cuda.is_available():
        sys.exit("--device cuda: no CUDA module and device here (build with PYTRANSFORMER_CUDA=ON)")
    torch_cuda = torch is not None and torch.cuda.is_available()
    print(f"# device: {cuda.device_name()}{' (emulated)' if cuda.emulated() else ''}; torch on cuda: "
          f"{torch.cuda.get_device_name() if torch_cuda else 'no'}")
    print(f"{'kernel':<52} {'ours ms':>9} {'torch ms':>9} {'rate':>15} {'x torch':>8}")
    rows = []
    for case in opcases.cases("bench"):
        if case.op in CPU_ONLY or group_of(case) == "matmul_bf16":
            continue
        group = group_of(case)
        wanted = lambda label: not only or group in only or any(o in label for o in only)  # noqa: E731
        if not any(wanted(label_of(case, d)) for d in ("forward", "backward", "fwd+bwd", "step")):
            continue
        if quick and ("50304" in case.label or "124000000" in case.label or "Tq=1024" in case.label):
            continue
        x = case.make(np.random.default_rng(0))
        xd = {k: [cuda.to_device(a) for a in v] if isinstance(v, list) else
              cuda.to_device(v) if isinstance(v, np.ndarray) else v for k, v in x.items()}
        for direction, ours in case.calls(xd).items():
            label = label_of(case, direction)
            if not wanted(label):
                continue
            fns = {"ours": synced(ours, cuda.synchronize)}
            if torch_cuda and case.op in PEERS:
                with _TorchOnCuda():
                    peer = PEERS[case.op](case, x, direction).get("torch")
                if peer is not None:
                    fns["torch"] = synced(peer, torch.cuda.synchronize)
            times = {name: median_time(fn) for name, fn in fns.items()}
            work, unit = case.work(direction)
            row = {"kernel": label, "group": group, "device": "cuda", "unit": unit,
                   "ms": {k: v * 1e3 for k, v in times.items()}, "rate": work / times["ours"] / 1e9,
                   "vs_torch": times["torch"] / times["ours"] if "torch" in times else None}
            rows.append(row)
            ratio = f"{row['vs_torch']:8.2f}" if row["vs_torch"] else f"{'-':>8}"
            torch_ms = f"{row['ms']['torch']:9.3f}" if "torch" in row["ms"] else f"{'-':>9}"
            print(f"{label:<52} {row['ms']['ours']:9.3f} {torch_ms} {row['rate']:8.1f} {unit:<6} {ratio}")
            sys.stdout.flush()
    return rows


def print_header(header):
    print(f"# pytransformer {header['pytransformer']}  isa={header['isa']} (available: "
          f"{', '.join(header['available_isas'])})  openmp={header['openmp']}")
    print(f"# cpu: {header['cpu']}, {header['cores']} cores")
    print(f"# numpy {header['numpy']} ({header['numpy_blas']}), torch {header['torch']}, python {header['python']}")
    print(f"{'kernel':<52} {'thr':>3} {'ours ms':>9} {'numpy ms':>9} {'torch ms':>9} {'rate':>15} "
          f"{'%limit':>6} {'x numpy':>8} {'x torch':>8}")


def print_row(r):
    ms = r["ms"]
    fmt = lambda v: f"{v:9.3f}" if v is not None else f"{'-':>9}"
    ratio = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"
    extra = f"  scratch {r['extra_bytes'] / 1024:.0f} KiB" if "extra_bytes" in r else ""
    pct = f"{r['pct_limit']:5.0f}%" if r.get("pct_limit") is not None else f"{'-':>6}"
    print(f"{r['kernel']:<52} {r['threads']:>3} {fmt(ms['ours'])} {fmt(ms.get('numpy'))} {fmt(ms.get('torch'))} "
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
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the CUDA kernels against torch on the same GPU")
    args = ap.parse_args()
    if args.device == "cuda":
        rows = run_cuda([o for o in args.only.split(",") if o], args.quick)
        if args.json:
            path = args.json.replace("kernels.json", "kernels_cuda.json")
            write_json(path, {"results": rows})
            print(f"# wrote {path}")
        return
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
    print(f"# int8 dot peak ({pytransformer.cpu_info()['int8_dot']}): "
          + ", ".join(f"{n} thr {v:.0f} GOP/s" for n, v in lim["int8"].items()))
    if lim.get("amx_bf16"):
        print("# AMX bf16 peak: " + ", ".join(f"{n} thr {v:.0f} GFLOP/s" for n, v in lim["amx_bf16"].items()))
    for key in ("bandwidth_l3", "bandwidth_dram"):
        print(f"# {key}: " + ", ".join(f"{n} thr {v:.1f} GB/s" for n, v in lim[key].items()))
    header["limits"] = lim
    header, rows = run(args.threads, [o for o in args.only.split(",") if o], args.quick, lim)
    header["limits"] = lim
    if args.json:
        write_json(args.json, {"machine": header, "results": rows})
        print(f"# wrote {args.json}")
    if args.plot:
        plot(rows, os.path.splitext(args.json or "bench/results/kernels.json")[0] + ".png")


def plot(rows, path):
    """Per kernel and thread count: % of the machine limit, and the speed ratio to torch and to numpy."""
    plt = pyplot()
    if plt is None:
        return
    labels = [f"{r['kernel']} [{r['threads']}t]" for r in rows]
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(16, 0.28 * len(rows) + 2), sharey=True)
    axes[0].barh(y, [r.get("pct_limit") or 0 for r in rows], color="tab:blue")
    axes[0].set_xlabel("% of machine limit (FMA, int8 dot or AMX peak, or bandwidth)")
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
