"""Data-parallel training on MPI against one process, on this machine: 2 ranks x 1 thread against 1 rank x 2
threads (the same global batch, model and seed), tokens/s and the share of the step spent waiting for the
all-reduce after backward; then the written scaling model for N machines (bench/scaling_model.py).

    python bench/distributed.py [--steps 30] [--batch 16] [--layers 4] [--embd 128] [--context 128]

Needs `pip install "pytransformer[mpi]"` (mpi4py and Open MPI from pip).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile


def run(cmd, env, cwd):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--embd", type=int, default=128)
    ap.add_argument("--context", type=int, default=128)
    args = ap.parse_args()
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit('no mpiexec: pip install "pytransformer[mpi]"')
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    extra = ["--oversubscribe", "--bind-to", "none"] if "Open MPI" in version else []
    train = ["-m", "pytransformer", "train", "--steps", str(args.steps), "--batch", str(args.batch), "--layers",
             str(args.layers), "--embd", str(args.embd), "--heads", "4", "--context", str(args.context),
             "--eval-every", str(args.steps), "--sample-tokens", "0"]
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PYTRANSFORMER_ADAPTIVE_THREADS": "0"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd, threads in (("1 rank x 2 threads", [sys.executable] + train, "2"),
                                   ("2 ranks x 1 thread", [mpiexec, *extra, "-n", "2", sys.executable] + train, "1")):
            log = os.path.join(tmp, name.replace(" ", "_") + ".jsonl")
            run(cmd + ["--out", os.path.join(tmp, name.replace(" ", "_")), "--log", log],
                {**env, "PYTRANSFORMER_NUM_THREADS": threads}, tmp)
            rows = [json.loads(line) for line in open(log)]
            steady = rows[len(rows) // 3:]  # (after warm-up)
            seconds = steady[-1]["elapsed_s"] - steady[0]["elapsed_s"]
            tokens = (len(steady) - 1) * args.batch * args.context
            wait = steady[-1]["allreduce_wait_s"] - steady[0]["allreduce_wait_s"]
            results[name] = (tokens / seconds, wait / seconds, rows[-1]["loss"])
    print(f"# GPT {args.layers} layers x {args.embd}, context {args.context}, global batch {args.batch}, "
          f"{args.steps} steps; {version.splitlines()[0] if version else 'MPI'}")
    print("| run | tokens/s | all-reduce wait (share of the step) | final loss |")
    print("|---|---|---|---|")
    for name, (tps, share, loss) in results.items():
        print(f"| {name} | {tps:,.0f} | {100 * share:.1f}% | {loss:.4f} |")
    a, b = results["2 ranks x 1 thread"][0], results["1 rank x 2 threads"][0]
    print(f"2 ranks / 1 rank: {a / b:.2f}x")
    subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scaling_model.py")])


if __name__ == "__main__":
    main()
