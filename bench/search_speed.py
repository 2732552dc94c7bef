"""Search latency over a saved index of N random unit embeddings (default 1M x 384), one query at a time, at 1 and
2 threads: the first pass over sign bits (and int8, and every float32 row: exact) with float32 rescoring, and the
recall@10 of each against exact search. Two kinds of query: a stored row plus noise (a near neighbour exists, as
for a real question) and a random vector (no neighbour stands out: the hard case for any first pass).

    python bench/search_speed.py [--n 1000000] [--dim 384] [--queries 50] [--folder DIR]

The index is built once into --folder (default a temporary folder, removed after) from seeded random vectors."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import numpy as np

import pytransformer
from pytransformer.index import BUILD_CHUNK, Index


class RandomRows:
    """A stand-in encoder: text "i" -> the i-th of a seeded stream of random vectors (chunks of BUILD_CHUNK)."""

    path = None

    def __init__(self, dim):
        self.dim = dim

    def encode(self, texts, batch_size=32, prompt_name=None):
        start = int(texts[0])
        return np.random.default_rng(start).standard_normal((len(texts), self.dim), dtype=np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--exact-queries", type=int, default=20, dest="exact_queries",
                    help="queries timed for exact search (it reads every float32 row)")
    ap.add_argument("--rescore", type=int, nargs="+", default=[10, 100],
                    help="first-pass candidates kept per result (each value timed for the binary pass)")
    ap.add_argument("--folder", help="keep the index here (reused when it exists)")
    args = ap.parse_args()
    folder = args.folder or tempfile.mkdtemp(prefix="search-speed-")
    try:
        if not os.path.isfile(os.path.join(folder, "meta.json")):
            t = time.perf_counter()
            Index.build([str(i) for i in range(args.n)], RandomRows(args.dim), folder, batch_size=BUILD_CHUNK)
            print(f"# built {args.n:,} x {args.dim} in {time.perf_counter() - t:.0f} s")
        ix = Index(folder)
        run(ix, args)
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)


def run(ix, args):
    rng = np.random.default_rng(1)
    rows = rng.integers(0, len(ix), args.queries)
    near = np.asarray(ix.float32[np.sort(rows)]) + rng.standard_normal((args.queries, ix.dim)).astype(np.float32) \
        * (0.5 / np.sqrt(ix.dim))
    kinds = {"near a stored row": near, "random": rng.standard_normal((args.queries, ix.dim)).astype(np.float32)}
    print(f"# {len(ix):,} stored x {ix.dim} dims ({', '.join(['float32', *ix.meta['stores']])}), top 10 (the first "
          f"pass keeps 10 x rescore); {platform.processor() or platform.machine()}, isa "
          f"{pytransformer.cpu_info()['isa']}, numpy {np.__version__}")
    print(f"popcount {pytransformer.cpu_info()['popcount']}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores: wall time is what a query took, CPU time what it used (all threads); on a shared "
          "machine the wall time grows with the load. Peak RSS: how far the process's peak resident memory rose "
          "above its resident memory during the timed queries (a copy of the binary file would add its size)")
    print(f"| threads | queries | first pass | rescore | wall ms per query (median) | CPU ms | recall@10 vs exact "
          f"({args.exact_queries} queries) | peak RSS + MB | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    exact = {k: [[h.id for h in ix.search(q, 10, first_pass="exact")] for q in qs[:args.exact_queries]]
             for k, qs in kinds.items()}
    passes = [("binary", r) for r in args.rescore] + [("int8", args.rescore[0]), ("exact", 1)]
    for threads in (1, 2):
        pytransformer.set_num_threads(threads)
        for kind, qs in kinds.items():
            for first_pass, rescore in passes:
                n = args.exact_queries if first_pass != "binary" else len(qs)
                ix.search(qs[0], 10, first_pass, rescore)  # warm: pages mapped, threads started
                rss = restart_peak_rss()
                wall, cpu, got = [], [], []
                for q in qs[:n]:
                    t, c = time.perf_counter(), time.process_time()
                    got.append([h.id for h in ix.search(q, 10, first_pass, rescore)])
                    wall.append(time.perf_counter() - t)
                    cpu.append(time.process_time() - c)
                recall = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact[kind])])
                grown = (memory("VmHWM") - rss) / 2**20 if rss is not None else float("nan")
                print(f"| {threads} | {kind} | {first_pass} | {rescore if first_pass != 'exact' else '-'} | "
                      f"{1e3 * np.median(wall):.1f} | {1e3 * np.median(cpu):.1f} | {recall:.3f} | {grown:.1f} | "
                      f"{os.getloadavg()[0]:.1f} |")

def memory(field):
    """A size from /proc/self/status (VmRSS: resident now, VmHWM: the peak) in bytes."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1]) * 1024


def restart_peak_rss():
    """Restart the peak resident memory from the present (Linux) -> the resident memory now, or None."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return memory("VmRSS")
    except OSError:
        return None


if __name__ == "__main__":
    main()
