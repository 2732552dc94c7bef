"""A short self-check of every kernel (forward and backward) against the float64 reference: the op-case
registry's cases tagged "check" (pytransformer/opcases.py), the same descriptions the tests and the bench use.

`pytransformer info` runs it for every ISA variant this machine supports.
"""

from __future__ import annotations

import numpy as np

from . import _runtime
from .opcases import cases


def run(isas=None, seed=0):
    """-> {isa: {case label: (worst relative error over its outputs, tolerance)}} for each ISA (default: every
    one supported here). An output that must be exact has tolerance 0."""
    info = _runtime.cpu_info()
    before = info["isa"]
    results = {}
    try:
        for isa in isas or info["available_isas"]:
            _runtime.set_isa(isa)
            results[isa] = {}
            for case in cases("check"):
                errors = case.errors(case.make(np.random.default_rng(seed)))
                worst = max(errors.values(), key=lambda e: (e[0] > e[1], e[0] - e[1]))
                results[isa][case.label] = worst
    finally:
        _runtime.set_isa(before)
    return results
