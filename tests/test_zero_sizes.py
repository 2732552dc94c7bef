"""Empty and degenerate sizes: an empty output returns at once (never a loop over empty rows, never a crash), and
sizes with no meaning (a head of 0 channels, LayerNorm over 0 channels) are a ValueError naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer import ops
from pytransformer import reference as ref


def E(*shape):
    return np.zeros(shape, np.float32)


def huge_empty(*shape):
    """An array of 0 elements whose shape multiplies huge leading sizes by a zero (no memory behind it)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape, (0,) * len(shape))


def test_row_ops_over_zero_columns_return_at_once(isa):
    rows = huge_empty(2**40, 0)  # 2**40 empty rows: looping over them would take hours
    assert ops.softmax_forward(np.ascontiguousarray(rows)).shape == (2**40, 0)
    out = ops.softmax_forward(E(3, 0))
    assert out.shape == (3, 0)
    assert ops.softmax_backward(E(3, 0), out).shape == (3, 0)


def test_embedding_with_zero_channels(isa):
    ids = np.array([0, 1, 1], np.int64)
    assert ops.embedding_forward(ids, E(2, 0)).shape == (3, 0)
    assert ops.embedding_backward(E(3, 0), ids, 2).shape == (2, 0)  # was SIGFPE: slice width divided by C


@pytest.mark.parametrize("N,IC,OC", [(0, 4, 3), (2, 0, 3), (2, 4, 0), (0, 0, 0)])
def test_matmul_with_empty_dimensions_matches_reference(isa, N, IC, OC):
    rng = np.random.default_rng(N + IC + OC)
    x, w, b, g = (rng.standard_normal(s).astype(np.float32) for s in ((N, IC), (OC, IC), (OC,), (N, OC)))
    np.testing.assert_allclose(ops.matmul_forward(x, w, b), ref.matmul_forward(x, w, b), atol=1e-6)
    for got, want in zip(ops.matmul_backward(g, x, w), ref.matmul_backward(g, x, w)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_attention_with_no_queries_or_no_keys(isa):
    out, lse = ops.attention_forward(E(1, 2, 0, 4), E(1, 2, 3, 4), E(1, 2, 3, 4))
    assert out.shape == (1, 2, 0, 4) and lse.shape == (1, 2, 0)
    out, lse = ops.attention_forward(E(1, 1, 2, 4), E(1, 1, 0, 4), E(1, 1, 0, 4))
    assert not out.any() and np.isneginf(lse).all()  # a query that sees no key gives 0, lse -inf
    dq, dk, dv = ops.attention_backward(np.ones_like(out), E(1, 1, 2, 4), E(1, 1, 0, 4), E(1, 1, 0, 4), out, lse)
    assert not dq.any() and dk.shape == (1, 1, 0, 4)


def test_meaningless_sizes_are_named_errors():
    with pytest.raises(ValueError, match="head size HS = 0"):
        ops.attention_forward(E(1, 1, 2, 0), E(1, 1, 3, 0), E(1, 1, 3, 0))
    with pytest.raises(ValueError, match="head size HS = 0"):
        ops.attention_forward(E(1, 1, 2, 0), E(1, 1, 3, 0), E(1, 1, 3, 0), scale=1.0)
    with pytest.raises(ValueError, match="no channels to normalise over"):
        ops.layernorm_forward(E(3, 0), E(0), E(0))


@pytest.mark.parametrize("fn", [
    lambda: ops.gelu_forward(E(0)), lambda: ops.relu_backward(E(0), E(0)), lambda: ops.dropout_forward(E(0), 0.5, 1),
    lambda: ops.residual_backward(E(0)), lambda: ops.adamw_step(E(0), E(0), E(0), E(0), 1e-3),
    lambda: ops.layernorm_forward(E(0, 5), E(5), E(5)), lambda: ops.crossentropy_backward(E(0, 5), np.zeros(0, np.int64), E(0)),
    lambda: ops.embedding_backward(E(0, 4), np.zeros(0, np.int64), 3),
])
def test_empty_tensors_pass_through(isa, fn):
    fn()


def test_sum_squares_of_nothing_is_zero(isa):
    assert ops.sum_squares(E(0)) == 0.0 and ops.global_norm(E(0)) == 0.0
