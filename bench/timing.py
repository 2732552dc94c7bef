"""What every benchmark here shares: the median wall time of a call over repeats, after warm-up calls; the machine
line every table is printed with; the JSON results file; another checkout to compare with; a count option."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import pytransformer


def median_time(fn, repeats, warmup=0, clock=time.perf_counter):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def machine(**peers) -> str:
    """'pytransformer VERSION isa=ISA' and each peer's 'name version': the line every table is printed with."""
    line = f"pytransformer {pytransformer.__version__} isa={pytransformer.cpu_info()['isa']}"
    return ", ".join([line] + [f"{name} {version}" for name, version in peers.items()])


def write_json(path, results) -> None:
    """The results as JSON at path, its folder made if need be."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


def checkout(path) -> str:
    """path as an absolute PYTHONPATH for another checkout of pytransformer (--compare, --baseline), or exits with a
    one-line error: a wrong path would otherwise run whichever pytransformer is installed."""
    if not os.path.isfile(os.path.join(path, "pytransformer", "__init__.py")):
        raise SystemExit(f"{path}: not a checkout of pytransformer (no pytransformer/__init__.py there)")
    return os.path.abspath(path)


def positive(text) -> int:
    """An argparse type: a whole number >= 1 (jobs, steps, rounds, clients: zero of them measures nothing)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not >= 1")
    return n
