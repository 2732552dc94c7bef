"""This machine's limits, measured in the same run as the kernels: FMA throughput per ISA variant (independent
FMA chains on every thread), the integer dot product's throughput (the instruction the int8-activation products
use: cpu_info()["int8_dot"]) and memory bandwidth of a threaded a + b -> out pass at an L3-resident (25 MB per
array) and a DRAM-sized (400 MB) working set.

    python bench/limits.py [--threads 1 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import pytransformer
from pytransformer import _core, ops


def _best_rate(probe, warmup_iters, iters, seconds):
    """Best GFLOP/s of probe(iters) (which returns the flops it did) over `seconds`, after one warm-up call."""
    probe(warmup_iters)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        flops = probe(iters)
        best = max(best, flops / (time.perf_counter() - t) / 1e9)
    return best


def fma_peak(threads, isa=None, seconds=0.3):
    """Best GFLOP/s of independent FMA chains on `threads` threads with the given (or active) ISA."""
    before = pytransformer.cpu_info()["isa"]
    if isa:
        pytransformer.set_isa(isa)
    pytransformer.set_num_threads(threads)
    try:
        return _best_rate(_core.fma_probe, 10**5, 2 * 10**6, seconds)
    finally:
        pytransformer.set_isa(before)


def int8_peak(threads, seconds=0.3):
    """Best GOP/s (2 per multiply-add, as flops count) of independent integer dot-product chains on `threads`
    threads, with the instruction the int8 products use (cpu_info()["int8_dot"]: vpdpbusd, vpmaddubsw, scalar)."""
    pytransformer.set_num_threads(threads)
    return _best_rate(lambda iters: 2 * _core.int8_dot_probe(iters), 10**5, 2 * 10**6, seconds)


def amx_peak(threads, seconds=0.3):
    """Best GFLOP/s of independent bf16 tile products (TDPBF16PS) on `threads` threads; None without AMX."""
    if not pytransformer.cpu_info()["amx_bf16"]:
        return None
    pytransformer.set_num_threads(threads)
    return _best_rate(_core.amx_probe, 10**4, 2 * 10**5, seconds)


def bandwidth(threads, nbytes_per_array=25 * 2**20, reps=20):
    """GB/s of a = a + b over all threads (2 streams read, 1 written back in place, so no write-allocate
    traffic: the ceiling a kernel can reach), median over reps."""
    pytransformer.set_num_threads(threads)
    n = nbytes_per_array // 4
    a, b = np.ones(n, np.float32), np.ones(n, np.float32)
    ops.residual_forward(a, b, out=a)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        ops.residual_forward(a, b, out=a)
        times.append(time.perf_counter() - t)
    return 3 * n * 4 / float(np.median(times)) / 1e9


def read_bandwidth(threads, nbytes=400 * 2**20, reps=9, arrays=2):
    """GB/s of reading memory only (what a decoded token does with the weights): the sum of squares of one of two
    arrays of nbytes each, taken in turn so that neither stays in cache, median over reps. arrays=1: one array read
    over and over (as a decoder re-reads its weights: whatever part of them the caches keep, this keeps too)."""
    pytransformer.set_num_threads(threads)
    arrays = [np.ones(nbytes // 4, np.float32) for _ in range(arrays)]
    times = []
    for i in range(reps + 2):
        t = time.perf_counter()
        ops.sum_squares(arrays[i % len(arrays)])
        times.append(time.perf_counter() - t)
    return nbytes / float(np.median(times[2:])) / 1e9


def measure(threads=(1, 2)):
    """-> {"fma": {isa: {threads: GFLOP/s}}, "int8": {threads: GOP/s}, "amx_bf16": {threads: GFLOP/s} (empty
    without AMX),
    "bandwidth_l3": {threads: GB/s}, "bandwidth_dram": {...}}"""
    before = pytransformer.get_num_threads()
    isas = [i for i in pytransformer.cpu_info()["available_isas"] if i != "baseline"] or ["baseline"]
    try:
        amx = {n: amx_peak(n) for n in threads} if pytransformer.cpu_info()["amx_bf16"] else {}
        return {"fma": {isa: {n: fma_peak(n, isa) for n in threads} for isa in isas},
                "int8": {n: int8_peak(n) for n in threads}, "amx_bf16": amx,
                "bandwidth_l3": {n: bandwidth(n) for n in threads},
                "bandwidth_dram": {n: bandwidth(n, 400 * 2**20, reps=5) for n in threads},
                "bandwidth_read": {n: read_bandwidth(n) for n in threads}}
    finally:
        pytransformer.set_num_threads(before)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    lim = measure(args.threads)
    for isa, per in lim["fma"].items():
        print(f"FMA peak {isa:>7}: " + ", ".join(f"{n} thr {v:6.1f} GFLOP/s" for n, v in per.items()))
    print(f"int8 dot peak ({pytransformer.cpu_info()['int8_dot']}): "
          + ", ".join(f"{n} thr {v:6.1f} GOP/s" for n, v in lim["int8"].items()))
    if lim["amx_bf16"]:
        print("AMX bf16 peak   : " + ", ".join(f"{n} thr {v:6.1f} GFLOP/s" for n, v in lim["amx_bf16"].items()))
    for key in ("bandwidth_l3", "bandwidth_dram"):
        print(f"{key:>15}: " + ", ".join(f"{n} thr {v:5.1f} GB/s" for n, v in lim[key].items()))


if __name__ == "__main__":
    main()
