"""The Llama-era ops under bad and degenerate input: named errors, never a crash, a silent copy or a wrong answer;
outputs that overlap inputs refused unless documented in place."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer import _core, ops
from pytransformer.opcases import random_blocks


def f(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_rmsnorm_errors_and_degenerate_sizes(rng):
    x, w = f(rng, 4, 8), f(rng, 8)
    with pytest.raises(ValueError, match="no channels"):
        ops.rmsnorm_forward(np.zeros((3, 0), np.float32), np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="weight"):
        ops.rmsnorm_forward(x, f(rng, 7))
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.rmsnorm_forward(np.asfortranarray(f(rng, 4, 8)), w)
    with pytest.raises(TypeError):
        ops.rmsnorm_forward(x.astype(np.float64), w)
    out, rstd = ops.rmsnorm_forward(np.zeros((0, 8), np.float32), w)
    assert out.shape == (0, 8) and rstd.shape == (0,)
    y, r = ops.rmsnorm_forward(x, w)
    same, _ = ops.rmsnorm_forward(x.copy(), w, out=None)
    np.testing.assert_array_equal(y, same)
    buf = np.zeros(8 * 5, np.float32)
    with pytest.raises(ValueError, match="overlap|share"):  # an output overlapping the weight
        ops.rmsnorm_forward(x, buf[4:12], out=buf[8:].reshape(4, 8))


def test_rope_errors(rng):
    cos, sin = ops.rope_tables(10, 8)
    x = f(rng, 2, 3, 4, 8)
    pos = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="outside"):
        ops.rope_forward(x, cos, sin, np.full((2, 3), 10, np.int64))  # past the tables
    with pytest.raises(ValueError, match="outside"):
        ops.rope_forward(x, cos, sin, np.full((2, 3), -1, np.int64))
    with pytest.raises(ValueError, match="positions"):
        ops.rope_forward(x, cos, sin, np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="columns"):
        ops.rope_forward(f(rng, 2, 3, 4, 6), cos, sin, pos)
    with pytest.raises(ValueError):
        ops.rope_tables(4, 7)  # odd head size
    assert ops.rope_forward(np.zeros((0, 4, 8), np.float32), cos, sin, np.zeros(0, np.int64)).shape == (0, 4, 8)
    y = ops.rope_forward(x.copy(), cos, sin, pos)
    z = x.copy()
    ops.rope_forward(z, cos, sin, pos, out=z)  # in place: documented
    np.testing.assert_array_equal(y, z)


@pytest.mark.parametrize("gated", ["swiglu", "geglu"])
def test_gated_errors_and_in_place(rng, gated):
    forward, backward = getattr(ops, gated + "_forward"), getattr(ops, gated + "_backward")
    g, u, d = f(rng, 5, 7), f(rng, 5, 7), f(rng, 5, 7)
    with pytest.raises(ValueError, match="shape"):
        forward(g, f(rng, 5, 6))
    want = forward(g, u)
    uu = u.copy()
    np.testing.assert_array_equal(forward(g, uu, out=uu), want)
    dg, du = backward(d, g, u)
    dd = d.copy()
    dg2, du2 = backward(dd, g, u, dgate=dd)
    np.testing.assert_array_equal(dg2, dg)
    np.testing.assert_array_equal(du2, du)
    with pytest.raises(ValueError):  # both gradients into one buffer would overwrite each other
        backward(d.copy(), g, u, dgate=dd, dup=dd)
    assert forward(np.zeros(0, np.float32), np.zeros(0, np.float32)).shape == (0,)


def test_quantized_weights_are_checked(rng):
    data = random_blocks(rng, "Q4_1", 3, 64)
    with pytest.raises(ValueError, match="unsupported"):
        ops.Quantized(data, "IQ2_XXS", (3, 64))
    with pytest.raises(ValueError, match="whole number"):
        ops.Quantized(data, "Q4_1", (3, 60))
    with pytest.raises(ValueError):
        ops.Quantized(data[:, :-1], "Q4_1", (3, 64))  # a row short of its blocks
    with pytest.raises(TypeError, match="uint8"):
        ops.Quantized(data.view(np.int8), "Q4_1", (3, 64))
    w = ops.Quantized(data, "Q4_1", (3, 64))
    with pytest.raises(ValueError, match="IC"):
        ops.matmul_forward(f(rng, 2, 63), w)
    with pytest.raises(ValueError, match="outside"):
        ops.dequantize(w, np.array([0, 3], np.int64))
    assert ops.matmul_forward(np.zeros((0, 64), np.float32), w).shape == (0, 3)
    with pytest.raises(ValueError):  # the raw binding checks the byte count too
        _core.matmul_q_forward(np.zeros((1, 3), np.float32), f(rng, 1, 64), data[:2], 3, None, 1, 64, 3)
    with pytest.raises(ValueError, match="unsupported GGUF type"):
        _core.matmul_q_forward(np.zeros((1, 3), np.float32), f(rng, 1, 64), data, 77, None, 1, 64, 3)


def test_grouped_attention_heads_must_divide(rng):
    q = f(rng, 1, 6, 3, 8)
    with pytest.raises(ValueError, match="divide"):
        ops.attention_forward(q, f(rng, 1, 4, 3, 8), f(rng, 1, 4, 3, 8))
    with pytest.raises(ValueError):
        _core.attention_forward(np.zeros_like(q), np.zeros((1, 6, 3), np.float32), q, f(rng, 1, 4, 3, 8),
                                f(rng, 1, 4, 3, 8), None, 1, 6, 4, 3, 3, 3, 8, False, 0, 0.3, False)


def test_label_smoothing_range(rng):
    x, t = f(rng, 3, 5), np.array([0, 1, 2])
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.crossentropy_forward(x, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="smoothing"):
        _core.crossentropy_forward(np.zeros(3, np.float32), np.zeros(3, np.float32), x, t, 3, 5, -100, -0.1)
