"""Kernel behaviours beyond matching the reference (that is tests/test_op_cases.py, over the registry of op
cases): leading dimensions, gradient accumulation, in-place outputs, extreme inputs, masks, layouts, under every
ISA variant here."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, f32

from pytransformer import ops
from pytransformer import reference as ref
from pytransformer.opcases import TOL


def test_matmul_takes_leading_dimensions(isa, rng):
    x, w = f32(rng, 2, 3, 5), f32(rng, 4, 5)
    out = ops.matmul_forward(x, w)
    assert out.shape == (2, 3, 4)
    assert_close(out, ref.matmul_forward(x, w), TOL)


def test_matmul_parameter_gradients_accumulate_and_input_gradient_is_overwritten(isa, rng):
    x, w, g = f32(rng, 9, 7), f32(rng, 5, 7), f32(rng, 9, 5)
    dinp = np.full((9, 7), 123.0, np.float32)
    dw, db = np.ones((5, 7), np.float32), np.ones(5, np.float32)
    ops.matmul_backward(g, x, w, dinp=dinp, dweight=dw, dbias=db)
    want = ref.matmul_backward(g, x, w)
    assert_close(dinp, want[0], TOL, "dinp overwritten")
    assert_close(dw, want[1] + 1.0, TOL, "dweight accumulated")
    assert_close(db, want[2] + 1.0, TOL, "dbias accumulated")


def test_gelu_extreme_inputs_stay_finite_and_exact(isa):
    x = np.array([-1e4, -100.0, -20.0, -10.0, -1e-8, 0.0, 1e-8, 10.0, 100.0, 1e4], np.float32)
    for approximate in ("tanh", "none"):
        out = ops.gelu_forward(x, approximate)
        np.testing.assert_allclose(out, ref.gelu_forward(x, approximate), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(ops.gelu_backward(np.ones_like(x), x, approximate),
                                   ref.gelu_backward(np.ones(10), x, approximate), rtol=1e-5, atol=1e-12)


def test_crossentropy_backward_in_place_over_logits(isa, rng):
    x = f32(rng, 7, 33)
    t = rng.integers(0, 33, 7)
    _, _, lse = ops.crossentropy_forward(x, t)
    want = ref.crossentropy_backward(x, t, lse)
    out = ops.crossentropy_backward(x, t, lse, dlogits=x)
    assert out is x
    assert_close(x, want, TOL)


def test_crossentropy_with_every_row_ignored_is_nan_with_zero_gradient(isa, rng):
    x, t = f32(rng, 3, 5), np.full(3, -100, np.int64)
    loss, _, lse = ops.crossentropy_forward(x, t)
    assert np.isnan(loss)
    assert not ops.crossentropy_backward(x, t, lse).any()


def test_dropout_drops_about_p_and_depends_on_seed(isa):
    x = np.ones(200000, np.float32)
    a, b = ops.dropout_forward(x, 0.25, 1), ops.dropout_forward(x, 0.25, 2)
    assert abs((a == 0).mean() - 0.25) < 0.01
    assert abs(a.mean() - 1.0) < 0.01  # inverted dropout keeps the expectation
    assert (a != b).any()
    np.testing.assert_array_equal(ops.dropout_forward(x, 0.0, 1), x)


@pytest.mark.parametrize("B,NH,Tq,Tk,HS,causal,masked", [(2, 3, 17, 17, 8, True, False), (1, 2, 5, 70, 20, True, True),
                                                      (2, 4, 65, 33, 16, False, True), (1, 1, 1, 1, 4, True, False)])
def test_attention_bthd_layout_reads_heads_in_place(isa, rng, B, NH, Tq, Tk, HS, causal, masked):
    """layout="bthd": q, k, v, out and the gradients as (B, T, NH, HS) -- the same numbers, transposed."""
    q, k, v = f32(rng, B, NH, Tq, HS), f32(rng, B, NH, Tk, HS), f32(rng, B, NH, Tk, HS)
    g = f32(rng, B, NH, Tq, HS)
    mask = (rng.random((B, Tk)) < 0.7) if masked else None
    t = lambda a: np.ascontiguousarray(a.transpose(0, 2, 1, 3))  # noqa: E731  (B, NH, T, HS) <-> (B, T, NH, HS)
    out, lse = ops.attention_forward(t(q), t(k), t(v), causal, mask, layout="bthd")
    want_out, want_lse = ref.attention_forward(q, k, v, causal, mask)
    assert out.shape == (B, Tq, NH, HS) and lse.shape == (B, NH, Tq)
    assert_close(t(out), want_out, TOL, "out")
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)
    got = ops.attention_backward(t(g), t(q), t(k), t(v), out, lse, causal, mask, layout="bthd")
    want = ref.attention_backward(g, q, k, v, want_out, want_lse, causal, mask)
    for name, a, e in zip(("dq", "dk", "dv"), got, want):
        assert_close(t(a), e, TOL, name)
    with pytest.raises(ValueError, match="layout"):
        ops.attention_forward(q, k, v, layout="bhdt")


@pytest.mark.parametrize("NH, NKV, Tk, HS", [(9, 3, 64, 64), (4, 1, 70, 40), (3, 3, 37, 17), (8, 2, 16, 256)])
def test_decoding_scores_of_many_keys_at_once_are_each_keys_own_sum(isa, rng, NH, NKV, Tk, HS):
    """Decoding rows without a key mask sum W keys' dot products across their lanes together (simd reduce_adds);
    with a mask of all True each key on its own (reduce_add): the same pairs added, so the same bits -- tails of keys
    and of the head size included, and a NaN in a key row (NaN for every head of its group, the others untouched)."""
    q, k, v = f32(rng, 2, NH, 1, HS), f32(rng, 2, NKV, Tk, HS), f32(rng, 2, NKV, Tk, HS)
    k[1, 0, Tk // 2, HS // 2] = np.nan
    every = np.ones((2, Tk), bool)
    out, lse = ops.attention_forward(q, k, v, True)
    want_out, want_lse = ops.attention_forward(q, k, v, True, every)
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(lse, want_lse)
    group = NH // NKV
    assert np.isnan(lse[1, :group]).all() and np.isfinite(lse[0]).all() and np.isfinite(lse[1, group:]).all()
    assert_close(out[0], ref.attention_forward(q[:1], k[:1], v[:1], True)[0][0], TOL)


def test_attention_fully_masked_rows_are_zero_not_nan(isa, rng):
    q, k, v = f32(rng, 1, 2, 5, 8), f32(rng, 1, 2, 3, 8), f32(rng, 1, 2, 3, 8)
    out, lse = ops.attention_forward(q, k, v, causal=True)  # Tq > Tk: the first two queries see no key
    assert not out[:, :, :2].any() and np.isneginf(lse[:, :, :2]).all()
    dq, dk, dv = ops.attention_backward(np.ones_like(out), q, k, v, out, lse, causal=True)
    assert np.isfinite(dq).all() and not dq[:, :, :2].any()
    assert np.isfinite(dk).all() and np.isfinite(dv).all()


def test_attention_custom_scale(isa, rng):
    q, k, v = f32(rng, 1, 1, 9, 4), f32(rng, 1, 1, 9, 4), f32(rng, 1, 1, 9, 4)
    out, _ = ops.attention_forward(q, k, v, scale=0.3)
    assert_close(out, ref.attention_forward(q, k, v, scale=0.3)[0], TOL)
