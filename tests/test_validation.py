"""Bad input raises TypeError/ValueError naming the argument; outputs are written in place, never copied."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import f32

from pytransformer import _core, ops


@pytest.fixture
def lin(rng):
    return f32(rng, 4, 8), f32(rng, 6, 8), f32(rng, 6)


def test_wrong_dtype_names_the_argument(lin):
    x, w, b = lin
    with pytest.raises(TypeError, match=r"inp must be float32 \(\.\.\., IC\) with IC=8, got float64 \(4, 8\)"):
        ops.matmul_forward(x.astype(np.float64), w, b)
    with pytest.raises(TypeError, match="weight must be float32"):
        ops.matmul_forward(x, w.astype(np.float16), b)


def test_wrong_shape_says_what_was_expected(lin):
    x, w, b = lin
    with pytest.raises(ValueError, match=r"inp must be float32 \(\.\.\., IC\) with IC=8, got float32 \(4, 7\)"):
        ops.matmul_forward(x[:, :7].copy(), w, b)
    with pytest.raises(ValueError, match=r"bias must be float32 \(OC,\)|bias must be float32 \(OC\)"):
        ops.matmul_forward(x, w, b[:5].copy())
    with pytest.raises(ValueError, match="q must be float32"):
        ops.attention_forward(f32(np.random.default_rng(0), 2, 4, 8), f32(np.random.default_rng(0), 2, 4, 8, 1),
                              f32(np.random.default_rng(0), 2, 4, 8, 1))


def test_not_an_array_is_a_type_error(lin):
    _, w, b = lin
    with pytest.raises(TypeError, match="inp must be a numpy array"):
        ops.matmul_forward([[1.0] * 8], w, b)


def test_non_contiguous_input_is_rejected_not_copied(lin):
    x, w, b = lin
    with pytest.raises(ValueError, match="inp must be C-contiguous"):
        ops.matmul_forward(np.asfortranarray(x), w, b)
    with pytest.raises(ValueError, match="weight must be C-contiguous"):
        ops.matmul_forward(x, np.ascontiguousarray(np.ones((8, 6), np.float32)).T, b)


def test_outputs_are_written_in_place(lin):
    x, w, b = lin
    out = np.full((4, 6), np.nan, np.float32)
    assert ops.matmul_forward(x, w, b, out=out) is out
    assert np.isfinite(out).all()
    y = np.empty((4, 8), np.float32)
    assert ops.gelu_forward(x, out=y) is y
    mean, rstd = np.empty(4, np.float32), np.empty(4, np.float32)
    o, m, r = ops.layernorm_forward(x, np.ones(8, np.float32), np.zeros(8, np.float32), mean=mean, rstd=rstd)
    assert m is mean and r is rstd


def test_elementwise_ops_may_run_in_place(rng):
    x = f32(rng, 100)
    want = ops.gelu_forward(x)
    assert ops.gelu_forward(x, out=x) is x
    np.testing.assert_array_equal(x, want)


def test_bad_outputs_are_rejected(lin):
    x, w, b = lin
    with pytest.raises(ValueError, match=r"out must be float32 \(4, 6\), got float32 \(4, 5\)"):
        ops.matmul_forward(x, w, b, out=np.empty((4, 5), np.float32))
    with pytest.raises(TypeError, match="out must be float32"):
        ops.matmul_forward(x, w, b, out=np.empty((4, 6), np.float64))
    ro = np.empty((4, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        ops.matmul_forward(x, w, b, out=ro)
    strided = np.empty((4, 12), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        ops.matmul_forward(x, w, b, out=strided)


def test_unsafe_aliasing_is_rejected(rng):
    x = f32(rng, 6, 6)
    with pytest.raises(ValueError, match="out overlaps inp"):
        ops.matmul_forward(x, f32(rng, 6, 6), out=x)
    q = f32(rng, 1, 1, 4, 8)
    with pytest.raises(ValueError, match="out overlaps q"):
        ops.attention_forward(q, q.copy(), q.copy(), out=q)


def test_ids_outside_the_vocabulary_are_rejected(rng):
    table = f32(rng, 5, 3)
    with pytest.raises(ValueError, match=r"ids\[2\] = 5 is outside \[0, 5\)"):
        ops.embedding_forward(np.array([0, 1, 5]), table)
    with pytest.raises(ValueError, match="outside"):
        ops.embedding_forward(np.array([-1]), table)
    with pytest.raises(TypeError, match="ids must be int64"):
        ops.embedding_forward(np.array([0, 1], np.int32), table)
    with pytest.raises(ValueError, match=r"targets\[1\] = 7 is outside"):
        ops.crossentropy_forward(f32(rng, 2, 7), np.array([0, 7]))


def test_key_mask_must_be_bool_or_uint8_of_shape_b_tk(rng):
    q = f32(rng, 2, 1, 3, 4)
    with pytest.raises(TypeError, match="key_mask must be a bool or uint8"):
        ops.attention_forward(q, q, q, key_mask=np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="key_mask must be"):
        ops.attention_forward(q, q, q, key_mask=np.ones((2, 4), bool))


def test_scalar_arguments_are_checked(rng):
    x = f32(rng, 10)
    with pytest.raises(ValueError, match="p must be a finite float in"):
        ops.dropout_forward(x, 1.0, 0)
    with pytest.raises(TypeError, match="seed must be an int"):
        ops.dropout_forward(x, 0.1, 1.5)
    with pytest.raises(ValueError, match="approximate must be"):
        ops.gelu_forward(x, "sigmoid")
    with pytest.raises(ValueError, match="step counts from 1"):
        ops.adamw_step(x, x.copy(), x.copy(), x.copy(), 1e-3, step=0)


def test_core_checks_sizes_even_when_called_directly(rng):
    # The raw module never trusts its caller: a wrong size is an exception, not an out-of-bounds read.
    x, w = f32(rng, 4, 8), f32(rng, 6, 8)
    with pytest.raises(ValueError, match="inp must have 64 elements"):
        _core.matmul_forward(np.empty((8, 6), np.float32), x, w, None, 8, 8, 6)
    with pytest.raises(TypeError, match="weight must be float32"):
        _core.matmul_forward(np.empty((4, 6), np.float32), x, w.astype(np.float64), None, 4, 8, 6)
    with pytest.raises(ValueError, match="sizes must be non-negative"):
        _core.matmul_forward(np.empty((4, 6), np.float32), x, w, None, -4, 8, 6)


def test_empty_arrays_are_fine(rng):
    x, w = np.empty((0, 8), np.float32), f32(rng, 6, 8)
    assert ops.matmul_forward(x, w).shape == (0, 6)
    assert ops.softmax_forward(np.empty((0, 5), np.float32)).shape == (0, 5)
