"""How pytransformer and PyTorch degrade when the machine is busy: the same workloads quiet and with N other
processes spinning (one per core you want taken), in one run; and how our kernels run right after another
library's parallel work in this process (NumPy's OpenBLAS, torch), whose pool keeps spinning for a while after it.

    python bench/contention.py [--busy 1] [--threads 2] [--repeats 5] [--cases all|busy|after]
                               [--json bench/results/contention.json]

Workloads (2 threads each unless --threads): greedy decoding of a small GPT (prefill + 32 tokens, batch 1), a
training step of a GPT (4 layers, 256 wide, batch 16 x 128), and a small-op pair (a 1 x 768 by 768 x 768 product
and a layernorm: the per-token path of decoding). Each number is the median over repeats; the ratio columns are
busy / quiet for each library, and ours / torch under the same load.

After another library (--cases after): GELU and LayerNorm forward over 8192 x 768 at --threads, each repeat timed
once quiet (after 0.3 s of sleep) and once right after five 1024 x 768 x 3072 float32 matmuls of NumPy, then of
torch; the ratio is right-after / quiet, medians over --repeats (goal: at most 1.2x). OpenBLAS's idle workers spin
for 2^OPENBLAS_THREAD_TIMEOUT cycles (read at NumPy's import; 28 when unset) after each call: run once more with
OPENBLAS_THREAD_TIMEOUT=4 to see the remedy README.md gives.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import threadpool_info

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import machine, median_time, write_json  # noqa: E402

import pytransformer  # noqa: E402
from pytransformer import ops  # noqa: E402
from pytransformer.models import GPT, GPTConfig  # noqa: E402
from pytransformer.optim import AdamW  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def workloads(repeats):
    """name -> {library: seconds} for this moment's load."""
    rng = np.random.default_rng(0)
    out = {}
    small = GPT(GPTConfig(vocab_size=96, max_positions=128, n_layer=4, n_head=4, n_embd=128), seed=0)
    prompt = rng.integers(0, 96, (1, 8))

    def ours_decode():
        small.generate(prompt, 32, temperature=0.0)

    out["decode 32 tokens (GPT 4L/128)"] = {"ours": median_time(ours_decode, repeats, warmup=2)}
    big = GPT(GPTConfig(vocab_size=65, max_positions=128, n_layer=4, n_head=4, n_embd=256), seed=0)
    opt = AdamW(big.params, lr=1e-3, weight_decay=0.1)
    xb = rng.integers(0, 65, (16, 128))
    yb = np.roll(xb, -1, 1)

    def ours_step():
        big.zero_grad()
        big.loss(xb, yb)
        big.backward()
        opt.step()

    out["train step (GPT 4L/256, 16x128)"] = {"ours": median_time(ours_step, repeats, warmup=2)}
    x, w = rng.standard_normal((1, 768), dtype=np.float32), rng.standard_normal((768, 768), dtype=np.float32)
    lw, lb = np.ones(768, np.float32), np.zeros(768, np.float32)

    def ours_pair():
        for _ in range(100):
            ops.layernorm_forward(ops.matmul_forward(x, w), lw, lb)

    out["small ops: 1x768 linear + layernorm (x100)"] = {"ours": median_time(ours_pair, repeats, warmup=2)}
    if torch:
        from torch_gpt import TorchGPT

        tsmall, tbig = TorchGPT(small), TorchGPT(big)
        tprompt = torch.from_numpy(prompt)

        def torch_decode():
            with torch.inference_mode():
                idx = tprompt
                for _ in range(32):  # the same algorithm as ours today: the whole context every step
                    idx = torch.cat([idx, tsmall(idx)[:, -1].argmax(-1, keepdim=True)], 1)

        topt = torch.optim.AdamW(tbig.parameters(), lr=1e-3, weight_decay=0.1)
        txb, tyb = torch.from_numpy(xb), torch.from_numpy(yb)

        def torch_step():
            topt.zero_grad()
            tbig(txb, tyb).backward()
            topt.step()

        tx, tw, tlw, tlb = map(torch.from_numpy, (x, w, lw, lb))

        def torch_pair():
            with torch.inference_mode():
                for _ in range(100):
                    F.layer_norm(F.linear(tx, tw), (768,), tlw, tlb)

        out["decode 32 tokens (GPT 4L/128)"]["torch"] = median_time(torch_decode, repeats, warmup=2)
        out["train step (GPT 4L/256, 16x128)"]["torch"] = median_time(torch_step, repeats, warmup=2)
        out["small ops: 1x768 linear + layernorm (x100)"]["torch"] = median_time(torch_pair, repeats, warmup=2)
    return out


def after_other_libraries(repeats):
    """kernel -> {"quiet", "after numpy", "after torch"}: median seconds of one call, quiet and right after another
    library's matmuls in this process (same repeats, interleaved)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8192, 768), dtype=np.float32)
    y, lw, lb = np.empty_like(x), np.ones(768, np.float32), np.zeros(768, np.float32)
    kernels = {"gelu forward 8192x768": lambda: ops.gelu_forward(x, out=y),
               "layernorm forward 8192x768": lambda: ops.layernorm_forward(x, lw, lb, out=y)}
    a, b = rng.standard_normal((1024, 768), dtype=np.float32), rng.standard_normal((768, 3072), dtype=np.float32)
    others = {"after numpy": lambda: a @ b}
    if torch:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        others["after torch"] = lambda: ta @ tb
    times = {name: {"quiet": []} | {other: [] for other in others} for name in kernels}
    for _ in range(repeats):
        for name, kernel in kernels.items():
            kernel()
            for other, matmul in others.items():
                time.sleep(0.3)  # every pool asleep
                times[name]["quiet"].append(median_time(kernel, 1))
                for _ in range(5):
                    matmul()
                times[name][other].append(median_time(kernel, 1))
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def busy_processes(n):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busy", type=int, default=1, help="spinning processes during the busy run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cases", choices=("all", "busy", "after"), default="all",
                    help="busy: quiet vs spinning processes; after: right after NumPy's and torch's matmuls")
    ap.add_argument("--json", default="bench/results/contention.json")
    args = ap.parse_args()
    pytransformer.set_num_threads(args.threads)
    if torch:
        torch.set_num_threads(args.threads)
    info = pytransformer.cpu_info()
    blas = [f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)" for i in threadpool_info()
            if i["user_api"] == "blas"]
    print(f"# {machine(torch=torch.__version__ if torch else None, numpy=np.__version__)} on {', '.join(blas) or '?'}, "
          f"threads={args.threads}, "
          f"{os.cpu_count()} cores, busy run: {args.busy} spinning process(es), "
          f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset')}")
    result = {"threads": args.threads, "busy": args.busy, "cpu_info": info}
    if args.cases in ("all", "busy"):
        result["rows"] = busy_table(args)
    if args.cases in ("all", "after"):
        result["after"] = after_table(args)
    if args.json:
        write_json(args.json, result)


def busy_table(args):
    quiet = workloads(args.repeats)
    procs = busy_processes(args.busy)
    try:
        time.sleep(0.5)
        busy = workloads(args.repeats)
    finally:
        for p in procs:
            p.kill()
    print(f"{'workload':<44} {'ours quiet':>11} {'ours busy':>10} {'slowdown':>9} {'torch quiet':>12} "
          f"{'torch busy':>11} {'slowdown':>9} {'busy: torch/ours':>17}")
    rows = []
    for name in quiet:
        q, b = quiet[name], busy[name]
        row = {"workload": name, "quiet": q, "busy": b}
        oq, ob = q["ours"] * 1e3, b["ours"] * 1e3
        line = f"{name:<44} {oq:9.1f}ms {ob:8.1f}ms {ob / oq:8.2f}x"
        if "torch" in q:
            tq, tb = q["torch"] * 1e3, b["torch"] * 1e3
            line += f" {tq:10.1f}ms {tb:9.1f}ms {tb / tq:8.2f}x {tb / ob:16.2f}x"
        print(line)
        rows.append(row)
    return rows


def after_table(args):
    after = after_other_libraries(args.repeats)
    print(f"\n{'kernel':<30} {'quiet':>9} {'after numpy':>12} {'ratio':>7} {'after torch':>12} {'ratio':>7}")
    for name, t in after.items():
        line = f"{name:<30} {t['quiet'] * 1e3:7.2f}ms"
        for other in ("after numpy", "after torch"):
            if other in t:
                line += f" {t[other] * 1e3:10.2f}ms {t[other] / t['quiet']:6.2f}x"
        print(line)
    return after


if __name__ == "__main__":
    main()
