"""A written model of data-parallel training over N machines (one MPI rank each), for the README's scaling table.

    python bench/scaling_model.py [--gflops 100 2000] [--batch-tokens 524288]

Per step every machine computes its share of the global batch (6 flops per parameter per token: forward 2,
backward 4) and the flat float32 gradient buffer (4 bytes per parameter) is all-reduced with a ring: each machine
sends and receives 2 (N - 1) / N of it. The reduction of each block's bucket starts as soon as backward has finished
that block (pytransformer.distributed.GradientSync), so it hides behind the rest of backward (two thirds of the
compute) except the last bucket; what is left is exposed. Scaling stops being worth it where the exposed
reduction reaches the compute it saves: efficiency = compute / (compute + exposed) falls to 50%.
"""

from __future__ import annotations

import argparse

MODELS = {"GPT-2 small (124M)": 124_439_808, "1.3B (GPT-3 XL)": 1_315_723_264}
LINKS_GBIT = (10, 25, 100)


def step(params, n, gflops, link_gbit, batch_tokens, layers=24):
    compute = 6 * params * batch_tokens / n / (gflops * 1e9)
    grad_bytes = 4 * params
    comm = 2 * (n - 1) / n * grad_bytes * 8 / (link_gbit * 1e9) if n > 1 else 0.0
    hidden = compute * 2 / 3  # backward
    exposed = max(comm - hidden, comm / layers) if n > 1 else 0.0
    return compute, comm, exposed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gflops", type=float, nargs="+", default=[100.0, 2000.0],
                    help="sustained training GFLOP/s of one machine (100: this 2-core machine; 2000: a 64-core server)")
    ap.add_argument("--batch-tokens", type=int, default=2**19, help="global batch in tokens (GPT-3 small: 0.5M)")
    ap.add_argument("--context", type=int, default=1024, help="tokens per sequence (a machine takes whole ones)")
    args = ap.parse_args()
    print(f"\n# scaling model: global batch {args.batch_tokens:,} tokens, ring all-reduce of float32 gradients, "
          f"overlapped with backward except the last bucket")
    print("| model | machine GFLOP/s | link | all-reduce per step | N = 2 | N = 8 | N = 32 | N = 128 | scaling stops at |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, params in MODELS.items():
        for gflops in args.gflops:
            for link in LINKS_GBIT:
                cells = []
                for n in (2, 8, 32, 128):
                    compute, comm, exposed = step(params, n, gflops, link, args.batch_tokens)
                    cells.append(f"{100 * compute / (compute + exposed):.0f}%")
                sequences = args.batch_tokens // args.context  # no machine can take less than one sequence
                stop = next((n for n in (2 ** k for k in range(1, 16)) if n <= sequences and
                             (lambda c, _, e: e >= c)(*step(params, n, gflops, link, args.batch_tokens))), None)
                _, comm2, _ = step(params, 1 << 20, gflops, link, args.batch_tokens)
                print(f"| {name} | {gflops:,.0f} | {link} Gb/s | {4 * params / 2**20:,.0f} MiB, {comm2:.2f} s | "
                      + " | ".join(cells) + f" | {'N = ' + str(stop) if stop else f'N = {sequences} (one sequence each)'} |")
    print("\nefficiency = compute / (compute + exposed all-reduce) per step; 'scaling stops' = the first power of two "
          "where the exposed all-reduce is as long as the compute, or where every machine holds one sequence of the "
          "global batch")


if __name__ == "__main__":
    main()
