"""Step 2 of the ladder: every kernel, under every ISA variant here, against the float64 reference, forward and
backward, for every case in the one registry of op cases (pytransformer/opcases.py: awkward sizes, T = 1, HS not
a multiple of 16, typical sizes). `pytransformer info` and bench/kernel_bench.py iterate the same registry."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer import opcases


@pytest.mark.parametrize("case", opcases.cases("test"), ids=lambda c: c.label)
def test_kernel_matches_float64_reference(isa, rng, case):
    for name, (err, tol) in case.errors(case.make(rng)).items():
        assert err <= tol, f"{case.label}: {name} relative error {err:.3g} > {tol:.3g}"


def test_every_op_has_test_and_check_cases_and_the_bench_covers_the_heavy_ones():
    tested = {c.op for c in opcases.cases("test")}
    assert tested == set(opcases.OPS)
    assert {c.op for c in opcases.cases("check")} == tested
    assert {"matmul", "attention", "layernorm", "softmax", "crossentropy", "adamw"} <= {
        c.op for c in opcases.cases("bench")}


def test_the_comparison_catches_what_it_should():
    assert opcases.rel_err([1.0, -np.inf], [1.0, -np.inf]) == 0.0  # a row that sees no key: -inf both sides
    assert opcases.rel_err([1.0, 0.0], [1.0, -np.inf]) == np.inf
    assert opcases.rel_err([np.nan], [1.0]) == np.inf
    assert opcases.rel_err([1.1, 2.0], [1.0, 2.0]) == pytest.approx(0.05)
    assert opcases.rel_err([1e-3], [0.0], floor=1.0) == pytest.approx(1e-3)


def test_a_wrong_kernel_fails_its_case(monkeypatch, rng):
    """The registry's check has teeth: a softmax off by one part in 10^4 is caught."""
    from pytransformer import ops

    case = next(c for c in opcases.cases("check") if c.op == "softmax")
    real = ops.softmax_forward
    monkeypatch.setattr(ops, "softmax_forward", lambda x, **kw: real(x, **kw) * np.float32(1 + 1e-4))
    errors = case.errors(case.make(rng))
    assert errors["out"][0] > errors["out"][1]
