"""NaN in, NaN out, on every path of the attention kernel (tiled, rows, split-K; every ISA; 1 and 8 threads; the
float32 and bf16 tables): a row that sees a NaN (its query, a visible key or value row) is NaN (out; lse too for a
query or key: the log-sum-exp reads no value); a row
that sees no key stays zeros with lse -inf; a NaN in a key or value row a row does not see (padding, causal) does
not reach it. Over every attention shape of the op-case registry."""

from __future__ import annotations

import numpy as np
import pytest

import pytransformer
from pytransformer import opcases, ops
from pytransformer import reference as ref
from conftest import switched

CASES = [c for c in opcases.cases("test") if c.op == "attention"]


@pytest.fixture(params=[1, 8], ids=["1thread", "8threads"])  # 8 on any machine: one long row splits its keys
def threads(request):
    yield from switched(request, pytransformer.get_num_threads, pytransformer.set_num_threads)


def poisonings(rng, x, visible, causal):
    """(name, array name, index, rows expected NaN (B, NH, Tq) bool) for a NaN query row, a NaN key row and a NaN
    value row at a visible key, and a NaN key and value row at a key some row does not see."""
    B, NH, Tq, _ = x["q"].shape
    NKV, Tk = x["k"].shape[1], x["k"].shape[2]
    group = NH // NKV
    sees = visible.any(-1)  # (B or 1, 1, Tq)
    b, h, i = rng.integers(B), rng.integers(NH), rng.integers(Tq)
    rows = np.zeros((B, NH, Tq), bool)
    rows[b, h, i] = np.broadcast_to(sees, (B, 1, Tq))[b, 0, i]
    yield "query", "q", (b, h, i), rows
    vis = np.broadcast_to(visible, (B, 1, Tq, Tk))
    seen_keys = np.argwhere(vis.any(2)[:, 0])  # (b, j) that some row sees
    hidden_keys = np.argwhere(~vis.all(2)[:, 0])  # (b, j) that some row does not see
    for kind, keys in (("visible", seen_keys), ("hidden", hidden_keys)):
        if not len(keys):
            continue
        b, j = keys[rng.integers(len(keys))]
        g = rng.integers(NKV)
        rows = np.zeros((B, NH, Tq), bool)
        rows[b, g * group:(g + 1) * group] = vis[b, 0, :, j]
        for name in ("k", "v"):
            yield f"{kind} {name}", name, (b, g, j), rows


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_a_nan_reaches_exactly_the_rows_that_see_it(isa, threads, precision, rng, case):
    x = case.make(rng)
    causal, mask, window = case.o.get("causal", False), x["key_mask"], case.o.get("window", 0)
    visible = ref.attention_visible(x["q"].shape[2], x["k"].shape[2], causal, mask, window)
    clean_out, clean_lse = ops.attention_forward(x["q"], x["k"], x["v"], causal, mask, window=window)
    sees_nothing = ~np.broadcast_to(visible.any(-1), clean_lse.shape)
    tol = 1e-5 if precision == "float32" else 2e-2
    for what, name, index, nan_rows in poisonings(rng, x, visible, causal):
        poisoned = dict(x, **{name: x[name].copy()})
        poisoned[name][index] = np.nan
        out, lse = ops.attention_forward(poisoned["q"], poisoned["k"], poisoned["v"], causal, mask, window=window)
        lse_nan_rows = nan_rows if name != "v" else np.zeros_like(nan_rows)
        assert np.isnan(out[nan_rows]).all() and np.isnan(lse[lse_nan_rows]).all(), f"{what}: a row that sees it"
        rest, lse_rest = ~nan_rows, ~lse_nan_rows
        assert not np.isnan(out[rest]).any() and not np.isnan(lse[lse_rest]).any(), f"{what}: a row that does not"
        np.testing.assert_allclose(out[rest], clean_out[rest], rtol=tol, atol=tol, err_msg=what)
        np.testing.assert_allclose(lse[lse_rest], clean_lse[lse_rest], rtol=tol, atol=tol, err_msg=what)
        assert (out[sees_nothing] == 0).all() and (lse[sees_nothing] == -np.inf).all(), what


SHAPES = {"rows": (2, 4, 3, 40, 17), "split": (1, 1, 1, 4100, 64), "tiled": (2, 2, 70, 70, 16)}


@pytest.mark.parametrize("path", SHAPES)
def test_infinite_scores_give_nan_as_softmax_does(isa, threads, rng, path):
    """softmax over scores that are all -inf, or hold +inf, is NaN (0 / 0, inf - inf): the row is NaN, not zeros."""
    B, NH, Tq, Tk, HS = SHAPES[path]
    q = rng.standard_normal((B, NH, Tq, HS)).astype(np.float32)
    k = np.abs(rng.standard_normal((B, NH, Tk, HS))).astype(np.float32) + np.float32(0.1)  # positive keys
    v = rng.standard_normal((B, NH, Tk, HS)).astype(np.float32)
    q[0, 0, -1] = -np.inf  # every score of this row is -inf
    q[-1, -1, 0] = np.inf  # every score of this row is +inf
    for causal in (False, True):
        out, lse = ops.attention_forward(q, k, v, causal)
        want, _ = ref.attention_forward(q[1:], k[1:], v[1:], causal) if B > 1 else (None, None)
        assert np.isnan(out[0, 0, -1]).all() and np.isnan(lse[0, 0, -1])
        assert np.isnan(out[-1, -1, 0]).all() and np.isnan(lse[-1, -1, 0])
        finite = np.ones((B, NH, Tq), bool)
        finite[0, 0, -1] = finite[-1, -1, 0] = False
        assert np.isfinite(out[finite]).all() and np.isfinite(lse[finite]).all()
        if want is not None:
            np.testing.assert_allclose(out[1:, :-1], want[:, :-1], rtol=1e-4, atol=1e-4)
