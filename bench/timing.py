"""What every benchmark here shares: the median wall time of a call over repeats, after warm-up calls."""

from __future__ import annotations

import statistics
import time


def median_time(fn, repeats, warmup=0):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
