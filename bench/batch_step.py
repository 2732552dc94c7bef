"""One continuous-batching decode step (`Decoder.decode_batch`: what `pytransformer serve` runs for B jobs at once)
with int8 and with float32 activations, each in its own process, alternating rounds.

    python bench/batch_step.py [--model smollm2 gemma3-270m] [--jobs 16] [--threads 1] [--steps 12] [--rounds 2]
                               [--baseline DIR]

B jobs whose caches hold 56 .. 71 positions each take one greedy token per step; a step's time is CPU time (on a
shared machine the wall clock also counts other tenants' minutes), the median over the steps after two warm-up
steps; the ratio is float32's over int8's in each round, and its median over the rounds. --baseline DIR also runs
the step from another checkout with its default activations in the same rounds (issue 26's "today's" step: the tree
the issue was filed against, 171497f, whose products all ran float32 activations). bench/NOTES.md, sessions 12-13
and 19 (issue 26's 16-row step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from timing import checkout, machine, positive

import pytransformer


def worker(name, activations, jobs, steps, threads):
    """{"step_ms": median CPU ms of one decode_batch of `jobs` rows} as one JSON line."""
    pytransformer.set_num_threads(threads)
    kwargs = {} if activations == "default" else {"activation_dtype": activations}  # (a --baseline tree's own)
    model = pytransformer.from_pretrained(name, **kwargs)
    k, v = model.new_slots(jobs, 128)
    slots = np.arange(jobs, dtype=np.int64)
    start = 56 + np.arange(jobs) % 16  # (caches of 56 .. 71 positions: prompts of different lengths)
    ids = np.random.default_rng(0).integers(0, 1000, jobs).astype(np.int64)
    times = []
    for s in range(steps + 2):
        t = time.process_time()
        logits = model.decode_batch(ids, slots, start + s, k, v)
        times.append(time.process_time() - t)
        ids = logits.argmax(1)
    print(json.dumps({"step_ms": 1e3 * statistics.median(times[2:])}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["smollm2", "gemma3-270m"])
    ap.add_argument("--jobs", type=positive, default=16)
    ap.add_argument("--threads", type=positive, default=1)
    ap.add_argument("--steps", type=positive, default=12)
    ap.add_argument("--rounds", type=positive, default=2)
    ap.add_argument("--baseline", metavar="DIR", help="another checkout whose default step runs in the same rounds")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "ACTIVATIONS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker, args.jobs, args.steps, args.threads)
    baseline = checkout(args.baseline) if args.baseline else None
    env = dict(os.environ, PYTRANSFORMER_ADAPTIVE_THREADS="0")  # (the threads asked for, not fewer for small work)
    print(f"# {machine()}; int8_dot={pytransformer.cpu_info()['int8_dot']}; {args.jobs} jobs per step, "
          f"{args.threads} thread(s), CPU time, medians of {args.steps} steps")
    for name in args.model:
        ms = {"int8": [], "float32": []} | ({"baseline": []} if args.baseline else {})
        for _ in range(args.rounds):
            for act, times in list(ms.items()):
                cmd = [sys.executable, __file__, "--worker", name, "default" if act == "baseline" else act, "--jobs",
                       str(args.jobs), "--steps", str(args.steps), "--threads", str(args.threads)]
                run_env = dict(env, PYTHONPATH=baseline) if act == "baseline" else env
                out = subprocess.run(cmd, capture_output=True, text=True, env=run_env, check=False)
                if out.returncode:
                    why = f"{name} {act}: {(out.stderr.strip().splitlines() or ['failed'])[-1]}"
                    if act != "baseline":
                        sys.exit(why)
                    print(f"  {args.baseline} left out: {why}")  # (a model that tree did not load)
                    del ms[act]
                    continue
                times.append(json.loads(out.stdout.splitlines()[-1])["step_ms"])
        ratios = [f / i for f, i in zip(ms["float32"], ms["int8"])]
        print(f"{name}: int8 {' '.join(f'{t:.1f}' for t in ms['int8'])} ms, float32 "
              f"{' '.join(f'{t:.1f}' for t in ms['float32'])} ms; float32 / int8 per round "
              f"{' '.join(f'{r:.2f}' for r in ratios)} -> {statistics.median(ratios):.2f}x")
        if "baseline" in ms:
            ratios = [b / i for b, i in zip(ms["baseline"], ms["int8"])]
            print(f"  {args.baseline}: {' '.join(f'{t:.1f}' for t in ms['baseline'])} ms; / int8 per round "
                  f"{' '.join(f'{r:.2f}' for r in ratios)} -> {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
