"""Step 2 of the ladder: every kernel, under every ISA variant here, against the float64 reference at
awkward sizes (1, 3, 17, 63, 65, 130; T = 1; HS not a multiple of 16) and typical ones."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, f32

from pytransformer import ops
from pytransformer import reference as ref

TOL = 2e-5  # float32 kernels vs float64 reference, relative to the largest reference magnitude

MATMUL_SHAPES = [  # (N, IC, OC): small-M path, edge tiles, several K blocks (IC > 384), several N blocks (OC > 1024),
    # rows 4 KB apart (IC or OC = 1024: slivers packed instead of read in place)
    (1, 1, 1), (1, 768, 130), (2, 33, 7), (3, 17, 65), (4, 3, 1), (17, 63, 65), (65, 130, 3), (130, 65, 130),
    (63, 600, 17), (5, 520, 3100), (256, 256, 192), (26, 1024, 1024),
]


@pytest.mark.parametrize("N,IC,OC", MATMUL_SHAPES)
def test_matmul_forward_matches_reference(isa, rng, N, IC, OC):
    x, w, b = f32(rng, N, IC), f32(rng, OC, IC), f32(rng, OC)
    assert_close(ops.matmul_forward(x, w, b), ref.matmul_forward(x, w, b), TOL)
    assert_close(ops.matmul_forward(x, w), ref.matmul_forward(x, w), TOL, "no bias")


@pytest.mark.parametrize("N,IC,OC", MATMUL_SHAPES)
def test_matmul_backward_matches_reference(isa, rng, N, IC, OC):
    x, w, g = f32(rng, N, IC), f32(rng, OC, IC), f32(rng, N, OC)
    got, want = ops.matmul_backward(g, x, w), ref.matmul_backward(g, x, w)
    for name, a, b in zip(("dinp", "dweight", "dbias"), got, want):
        assert_close(a, b, TOL, name)


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


ROW_SHAPES = [(1, 1), (3, 17), (17, 63), (65, 130), (2, 65), (64, 768)]


@pytest.mark.parametrize("N,C", ROW_SHAPES)
def test_layernorm_forward_and_backward_match_reference(isa, rng, N, C):
    x, w, b, g = f32(rng, N, C, scale=3.0) + 1.0, f32(rng, C), f32(rng, C), f32(rng, N, C)
    out, mean, rstd = ops.layernorm_forward(x, w, b, 1e-5)
    want_out, want_mean, want_rstd = ref.layernorm_forward(x, w, b, 1e-5)
    assert_close(out, want_out, TOL, "out")
    assert_close(mean, want_mean, TOL, "mean")
    assert_close(rstd, want_rstd, TOL, "rstd")
    got = ops.layernorm_backward(g, x, w, mean, rstd)
    want = ref.layernorm_backward(g, x, w, want_mean, want_rstd)
    for name, a, b_ in zip(("dinp", "dweight", "dbias"), got, want):
        assert_close(a, b_, TOL, name)


@pytest.mark.parametrize("n", [1, 3, 17, 63, 65, 130, 70000])
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_matches_reference(isa, rng, n, approximate):
    x, g = f32(rng, n, scale=3.0), f32(rng, n)
    # error relative to max(|y|, 1): 1 + erf(x / sqrt 2) cancels for x << 0 in float32 (as in torch)
    assert_close(ops.gelu_forward(x, approximate), ref.gelu_forward(x, approximate), TOL, "forward", floor=1.0)
    assert_close(ops.gelu_backward(g, x, approximate), ref.gelu_backward(g, x, approximate), TOL, "backward",
                 floor=1.0)


def test_gelu_extreme_inputs_stay_finite_and_exact(isa):
    x = np.array([-1e4, -100.0, -20.0, -10.0, -1e-8, 0.0, 1e-8, 10.0, 100.0, 1e4], np.float32)
    for approximate in ("tanh", "none"):
        out = ops.gelu_forward(x, approximate)
        np.testing.assert_allclose(out, ref.gelu_forward(x, approximate), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(ops.gelu_backward(np.ones_like(x), x, approximate),
                                   ref.gelu_backward(np.ones(10), x, approximate), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("n", [1, 3, 17, 130, 70000])
def test_relu_matches_reference(isa, rng, n):
    x, g = f32(rng, n), f32(rng, n)
    np.testing.assert_array_equal(ops.relu_forward(x), ref.relu_forward(x))
    np.testing.assert_array_equal(ops.relu_backward(g, x), ref.relu_backward(g, x))


@pytest.mark.parametrize("N,C", ROW_SHAPES + [(4, 50304)])
def test_softmax_matches_reference(isa, rng, N, C):
    x, g = f32(rng, N, C, scale=5.0), f32(rng, N, C)
    y = ops.softmax_forward(x)
    assert_close(y, ref.softmax_forward(x), TOL, "forward")
    assert_close(ops.softmax_backward(g, y), ref.softmax_backward(g, ref.softmax_forward(x)), TOL, "backward")


@pytest.mark.parametrize("N,V", [(1, 1), (3, 17), (17, 65), (64, 1000), (5, 50304)])
def test_crossentropy_matches_reference(isa, rng, N, V):
    x = f32(rng, N, V, scale=4.0)
    t = rng.integers(0, V, N)
    if N > 2:
        t[1] = -100
    loss, losses, lse = ops.crossentropy_forward(x, t)
    want_loss, want_losses, want_lse = ref.crossentropy_forward(x, t)
    assert abs(loss - want_loss) <= TOL * max(1.0, abs(want_loss))
    assert_close(losses, want_losses, TOL, "losses")
    assert_close(lse, want_lse, TOL, "lse")
    assert_close(ops.crossentropy_backward(x, t, lse, 0.5), ref.crossentropy_backward(x, t, want_lse, 0.5), TOL)


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


@pytest.mark.parametrize("N,V,C", [(1, 1, 1), (3, 5, 17), (65, 10, 63), (130, 7, 130), (4096, 50, 768)])
def test_embedding_matches_reference_with_repeated_ids(isa, rng, N, V, C):
    table, g = f32(rng, V, C), f32(rng, N, C)
    ids = rng.integers(0, V, N)  # with N > V, ids repeat
    np.testing.assert_array_equal(ops.embedding_forward(ids, table), table[ids])
    assert_close(ops.embedding_backward(g, ids, V), ref.embedding_backward(g, ids, V), TOL)


def test_residual_matches_reference(isa, rng):
    a, b = f32(rng, 3, 65), f32(rng, 3, 65)
    np.testing.assert_array_equal(ops.residual_forward(a, b), a + b)
    da, db = ops.residual_backward(a)
    np.testing.assert_array_equal(da, a)
    np.testing.assert_array_equal(db, a)


@pytest.mark.parametrize("n,p,seed", [(1, 0.5, 0), (130, 0.1, 3), (100003, 0.37, 2**63 + 5)])
def test_dropout_mask_and_scale_match_reference(isa, rng, n, p, seed):
    x, g = f32(rng, n), f32(rng, n)
    assert_close(ops.dropout_forward(x, p, seed), ref.dropout_forward(x, p, seed), 1e-6, "forward")
    assert_close(ops.dropout_backward(g, p, seed), ref.dropout_backward(g, p, seed), 1e-6, "backward")


def test_dropout_drops_about_p_and_depends_on_seed(isa):
    x = np.ones(200000, np.float32)
    a, b = ops.dropout_forward(x, 0.25, 1), ops.dropout_forward(x, 0.25, 2)
    assert abs((a == 0).mean() - 0.25) < 0.01
    assert abs(a.mean() - 1.0) < 0.01  # inverted dropout keeps the expectation
    assert (a != b).any()
    np.testing.assert_array_equal(ops.dropout_forward(x, 0.0, 1), x)


ATTENTION_CASES = [  # B, NH, Tq, Tk, HS
    (1, 1, 1, 1, 1), (2, 3, 17, 17, 8), (1, 2, 65, 65, 63), (2, 2, 1, 130, 17), (1, 1, 130, 65, 16),
    (1, 2, 17, 33, 5), (2, 4, 64, 64, 64), (1, 1, 3, 130, 130),
]


@pytest.mark.parametrize("B,NH,Tq,Tk,HS", ATTENTION_CASES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_matches_reference(isa, rng, B, NH, Tq, Tk, HS, causal, masked):
    q, k, v, g = f32(rng, B, NH, Tq, HS), f32(rng, B, NH, Tk, HS), f32(rng, B, NH, Tk, HS), f32(rng, B, NH, Tq, HS)
    mask = None
    if masked:
        mask = rng.random((B, Tk)) > 0.3
        mask[0, -1] = False
        if B > 1:
            mask[1] = False  # a sequence with no visible key: zeros, never NaN
    out, lse = ops.attention_forward(q, k, v, causal, mask)
    want_out, want_lse = ref.attention_forward(q, k, v, causal, mask)
    assert_close(out, want_out, TOL, "out")
    finite = np.isfinite(want_lse)
    np.testing.assert_array_equal(np.isfinite(lse), finite)
    assert_close(lse[finite], want_lse[finite], TOL, "lse")
    got = ops.attention_backward(g, q, k, v, out, lse, causal, mask)
    want = ref.attention_backward(g, q, k, v, want_out, want_lse, causal, mask)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert_close(a, b, TOL, name)


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


@pytest.mark.parametrize("n", [1, 17, 130, 100001])
def test_adamw_matches_reference_over_steps(isa, rng, n):
    p, m, v = f32(rng, n), np.zeros(n, np.float32), np.zeros(n, np.float32)
    rp, rm, rv = p.astype(np.float64), np.zeros(n), np.zeros(n)
    for step in range(1, 4):
        g = f32(rng, n)
        ops.adamw_step(p, m, v, g, 1e-2, 0.9, 0.95, 1e-8, 0.1, step)
        rp, rm, rv = ref.adamw_step(rp, rm, rv, g, 1e-2, 0.9, 0.95, 1e-8, 0.1, step)
    assert_close(p, rp, 1e-5, "params")
    assert_close(m, rm, 1e-5, "m")
    assert_close(v, rv, 1e-5, "v")


@pytest.mark.parametrize("n", [0, 1, 17, 130, 1000003])
def test_sum_squares_and_global_norm(isa, rng, n):
    x = f32(rng, n)
    want = ref.sum_squares(x)
    assert abs(ops.sum_squares(x) - want) <= 1e-6 * max(want, 1.0)
    assert abs(ops.global_norm(x) - np.sqrt(want)) <= 1e-6 * max(np.sqrt(want), 1.0)
