"""matplotlib for the benchmarks' charts, headless, or None (with a hint) when it is not installed."""

from __future__ import annotations


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# drawing the chart needs matplotlib (pip install matplotlib)")
        return None
    return plt
