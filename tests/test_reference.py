"""Step 1 of the ladder: every backward in reference.py against central finite differences in float64."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import central_difference

from pytransformer import reference as ref


def numeric_grad(f, x, h=1e-6):
    """d f() / dx by central differences over every element; f reads x (modified in place)."""
    return central_difference(f, x, range(x.size), h).reshape(x.shape)


def check(f, x, analytic, tol=1e-6):
    num = numeric_grad(f, x)
    err = np.abs(num - analytic).max() / max(np.abs(num).max(), 1e-12)
    assert err < tol, f"finite differences disagree: relative error {err:.3g}"


@pytest.fixture
def r():
    return np.random.default_rng(1234)


def test_matmul_backward_matches_finite_differences(r):
    x, w, b, g = r.standard_normal((2, 3, 5)), r.standard_normal((4, 5)), r.standard_normal(4), r.standard_normal((2, 3, 4))
    dx, dw, db = ref.matmul_backward(g, x, w)
    loss = lambda: (ref.matmul_forward(x, w, b) * g).sum()
    check(loss, x, dx)
    check(loss, w, dw)
    check(loss, b, db)


def test_layernorm_backward_matches_finite_differences(r):
    x, w, b, g = r.standard_normal((3, 7)), r.standard_normal(7), r.standard_normal(7), r.standard_normal((3, 7))
    _, mean, rstd = ref.layernorm_forward(x, w, b)
    dx, dw, db = ref.layernorm_backward(g, x, w, mean, rstd)
    loss = lambda: (ref.layernorm_forward(x, w, b)[0] * g).sum()
    check(loss, x, dx)
    check(loss, w, dw)
    check(loss, b, db)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_backward_matches_finite_differences(r, approximate):
    x, g = r.standard_normal(40) * 3, r.standard_normal(40)
    check(lambda: (ref.gelu_forward(x, approximate) * g).sum(), x, ref.gelu_backward(g, x, approximate))


def test_relu_backward_matches_finite_differences(r):
    x = r.standard_normal(30)
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    g = r.standard_normal(30)
    check(lambda: (ref.relu_forward(x) * g).sum(), x, ref.relu_backward(g, x))


def test_softmax_backward_matches_finite_differences(r):
    x, g = r.standard_normal((4, 9)), r.standard_normal((4, 9))
    check(lambda: (ref.softmax_forward(x) * g).sum(), x, ref.softmax_backward(g, ref.softmax_forward(x)))


def test_crossentropy_backward_matches_finite_differences(r):
    x = r.standard_normal((6, 11))
    t = r.integers(0, 11, 6)
    t[2] = -100
    _, _, lse = ref.crossentropy_forward(x, t)
    check(lambda: ref.crossentropy_forward(x, t)[0] * 0.7, x, ref.crossentropy_backward(x, t, lse, 0.7))


def test_embedding_backward_matches_finite_differences(r):
    table, ids, g = r.standard_normal((5, 3)), np.array([[1, 4, 1], [0, 1, 4]]), r.standard_normal((2, 3, 3))
    check(lambda: (ref.embedding_forward(ids, table) * g).sum(), table, ref.embedding_backward(g, ids, 5))


def test_residual_backward_matches_finite_differences(r):
    a, b, g = r.standard_normal(8), r.standard_normal(8), r.standard_normal(8)
    da, db = ref.residual_backward(g)
    check(lambda: (ref.residual_forward(a, b) * g).sum(), a, da)
    check(lambda: (ref.residual_forward(a, b) * g).sum(), b, db)


def test_dropout_backward_matches_finite_differences(r):
    x, g = r.standard_normal(50), r.standard_normal(50)
    check(lambda: (ref.dropout_forward(x, 0.3, 7) * g).sum(), x, ref.dropout_backward(g, 0.3, 7))


@pytest.mark.parametrize("causal,masked,Tq,Tk,window", [(False, False, 3, 5, 0), (True, False, 4, 4, 0),
                                                         (True, True, 3, 5, 0), (False, True, 4, 2, 0),
                                                         (True, False, 5, 5, 2), (True, True, 3, 6, 3)])
def test_attention_backward_matches_finite_differences(r, causal, masked, Tq, Tk, window):
    B, NH, HS = 2, 2, 3
    q, k, v = r.standard_normal((B, NH, Tq, HS)), r.standard_normal((B, NH, Tk, HS)), r.standard_normal((B, NH, Tk, HS))
    g = r.standard_normal((B, NH, Tq, HS))
    mask = None
    if masked:
        mask = np.ones((B, Tk), bool)
        mask[1, 1:] = False
    out, lse = ref.attention_forward(q, k, v, causal, mask, window=window)
    dq, dk, dv = ref.attention_backward(g, q, k, v, out, lse, causal, mask, window=window)
    loss = lambda: (ref.attention_forward(q, k, v, causal, mask, window=window)[0] * g).sum()
    check(loss, q, dq)
    check(loss, k, dk)
    check(loss, v, dv)


def test_attention_reference_matches_explicit_softmax(r):
    q, k, v = r.standard_normal((1, 1, 3, 2)), r.standard_normal((1, 1, 3, 2)), r.standard_normal((1, 1, 3, 2))
    out, lse = ref.attention_forward(q, k, v, causal=True)
    s = q[0, 0] @ k[0, 0].T / np.sqrt(2)
    for i in range(3):
        p = np.exp(s[i, : i + 1] - s[i, : i + 1].max())
        p /= p.sum()
        np.testing.assert_allclose(out[0, 0, i], p @ v[0, 0, : i + 1], rtol=1e-12)
        np.testing.assert_allclose(lse[0, 0, i], np.log(np.exp(s[i, : i + 1]).sum()), rtol=1e-12)


def test_attention_window_is_transformers_sliding_window():
    """Query i sees key j when i - window < j <= i (transformers' sliding_window_overlay over its causal mask), the
    query's position counted from the end of the keys (a KV cache); every row keeps its own key."""
    vis = ref.attention_visible(4, 6, causal=True, window=3)[0, 0]
    want = np.array([[j <= i + 2 and j > i + 2 - 3 for j in range(6)] for i in range(4)])
    np.testing.assert_array_equal(vis, want)
    assert vis[np.arange(4), np.arange(4) + 2].all()
    np.testing.assert_array_equal(ref.attention_visible(5, 5, causal=True, window=1)[0, 0], np.eye(5, dtype=bool))


def test_adamw_reference_matches_handwritten_step():
    p, g, m, v = np.array([1.0, -2.0]), np.array([0.5, 0.1]), np.zeros(2), np.zeros(2)
    p1, m1, v1 = ref.adamw_step(p, m, v, g, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step=1)
    # step 1: mhat = g, vhat = g^2, update = g / |g| = sign(g)
    np.testing.assert_allclose(p1, p * (1 - 0.01) - 0.1 * np.sign(g), rtol=1e-6)
    np.testing.assert_allclose(m1, 0.1 * g)
    np.testing.assert_allclose(v1, 0.01 * g * g)


def test_grouped_attention_backward_matches_finite_differences(r):
    B, NH, NKV, Tq, Tk, HS = 2, 4, 2, 3, 5, 3
    q, g = r.standard_normal((B, NH, Tq, HS)), r.standard_normal((B, NH, Tq, HS))
    k, v = r.standard_normal((B, NKV, Tk, HS)), r.standard_normal((B, NKV, Tk, HS))
    out, lse = ref.attention_forward(q, k, v, True)
    dq, dk, dv = ref.attention_backward(g, q, k, v, out, lse, True)
    loss = lambda: (ref.attention_forward(q, k, v, True)[0] * g).sum()
    check(loss, q, dq)
    check(loss, k, dk)
    check(loss, v, dv)


def test_rmsnorm_backward_matches_finite_differences(r):
    x, w, g = r.standard_normal((3, 7)), r.standard_normal(7), r.standard_normal((3, 7))
    _, rstd = ref.rmsnorm_forward(x, w)
    dx, dw = ref.rmsnorm_backward(g, x, w, rstd)
    loss = lambda: (ref.rmsnorm_forward(x, w)[0] * g).sum()
    check(loss, x, dx)
    check(loss, w, dw)


def test_rope_backward_matches_finite_differences(r):
    x, g = r.standard_normal((2, 3, 2, 6)), r.standard_normal((2, 3, 2, 6))
    cos, sin = ref.rope_tables(10, 6, 100.0)
    pos = r.integers(0, 10, (2, 3))
    check(lambda: (ref.rope_forward(x, cos, sin, pos) * g).sum(), x, ref.rope_backward(g, cos, sin, pos))


def test_rope_reference_is_hugging_face_rotate_half(r):
    x = r.standard_normal((1, 4, 1, 8))
    cos, sin = ref.rope_tables(4, 8, 10000.0)
    c = np.concatenate([cos, cos], -1)[:, None, :]
    s = np.concatenate([sin, sin], -1)[:, None, :]
    rotate_half = np.concatenate([-x[..., 4:], x[..., :4]], -1)
    np.testing.assert_allclose(ref.rope_forward(x, cos, sin, np.arange(4)[None]), x * c + rotate_half * s,
                               rtol=1e-12)


@pytest.mark.parametrize("gated", ["swiglu", "geglu"])
def test_gated_backward_matches_finite_differences(r, gated):
    forward, backward = getattr(ref, gated + "_forward"), getattr(ref, gated + "_backward")
    gate, up, g = r.standard_normal(20) * 3, r.standard_normal(20), r.standard_normal(20)
    dgate, dup = backward(g, gate, up)
    loss = lambda: (forward(gate, up) * g).sum()
    check(loss, gate, dgate)
    check(loss, up, dup)


def test_interleaved_rope_is_rotate_half_on_permuted_rows(r):
    """llama.cpp's pairs (2i, 2i + 1) on a vector permuted the way GGUF files store q and k = Hugging Face's
    rotate_half on the vector itself, permuted alike (so attention scores agree); and its backward is the adjoint."""
    x, g = r.standard_normal((2, 3, 2, 8)), r.standard_normal((2, 3, 2, 8))
    cos, sin = ref.rope_tables(6, 8, 100.0)
    pos = r.integers(0, 6, (2, 3))
    perm = np.arange(8).reshape(2, 4).T.reshape(-1)  # GGUF position 2i + j holds Hugging Face index j * 4 + i
    np.testing.assert_allclose(ref.rope_forward(x[..., perm], cos, sin, pos, True),
                               ref.rope_forward(x, cos, sin, pos)[..., perm], rtol=1e-12)
    check(lambda: (ref.rope_forward(x, cos, sin, pos, True) * g).sum(), x, ref.rope_backward(g, cos, sin, pos, True))


def test_label_smoothed_crossentropy_backward_matches_finite_differences(r):
    x, t = r.standard_normal((4, 7)), np.array([1, -100, 6, 0])
    _, _, lse = ref.crossentropy_forward(x, t, label_smoothing=0.1)
    check(lambda: ref.crossentropy_forward(x, t, label_smoothing=0.1)[0], x,
          ref.crossentropy_backward(x, t, lse, label_smoothing=0.1))


@pytest.mark.parametrize("causal,masked", [(False, False), (True, False), (False, True)])
def test_attention_reference_and_kernel_agree_on_non_finite_input(rng, causal, masked):
    """NaN in, NaN out, the same rows in the float64 spec and the kernel: a poisoned query row, a visible and a
    hidden key or value row (a hidden one never reaches a query), a row that sees no key (zeros, lse -inf)."""
    from pytransformer import ops

    B, NH, NKV, T, HS = 2, 4, 2, 9, 8
    mask = np.ones((B, T), bool)
    if masked:
        mask[1, 5:] = False  # (row 1's keys 5.. hidden)
    for poison in ("q", "k_visible", "v_visible", "k_hidden", "v_hidden"):
        q, k, v = (rng.standard_normal((B, h, T, HS)).astype(np.float32) for h in (NH, NKV, NKV))
        target = {"q": q, "k_visible": k, "v_visible": v, "k_hidden": k, "v_hidden": v}[poison]
        row = 7 if (poison.endswith("hidden") and masked) else 2
        target[1, 0, row, 3] = np.nan
        want_out, want_lse = ref.attention_forward(q, k, v, causal, mask if masked else None)
        got_out, got_lse = ops.attention_forward(q, k, v, causal, mask if masked else None)
        np.testing.assert_array_equal(np.isnan(got_out), np.isnan(want_out), err_msg=poison)
        np.testing.assert_array_equal(np.isnan(got_lse), np.isnan(want_lse), err_msg=poison)
