"""The LoRA weight's adapter part in one pass (nn/lora.py add_product): out += a @ b through the weight-gradient
product, in place, to float32 rounding; the forward and backward allocate no (N, OC) / (N, IC) temporary beside
their outputs; matmul_backward without dinp takes no weight."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from pytransformer import ops
from pytransformer.nn.lora import LoRAWeight, add_product
from pytransformer.nn.weights import Float32Weight

from conftest import f32

EPS = float(np.finfo(np.float32).eps)


@pytest.mark.parametrize("shape,r,M", [((7,), 3, 5), ((2, 33), 8, 70), ((4, 64), 8, 1536)])
def test_add_product_adds_in_place(rng, shape, r, M):
    out, a, b = f32(rng, *shape, M), f32(rng, *shape, r), f32(rng, r, M)
    expected = out.astype(np.float64) + a.astype(np.float64) @ b
    assert add_product(out, a, b) is out
    # r products and the add, each rounded once in float32
    bound = (r + 1) * EPS * (np.abs(a).astype(np.float64) @ np.abs(b) + np.abs(expected))
    assert np.all(np.abs(out - expected) <= bound)


def test_matmul_backward_takes_no_weight_without_dinp(rng):
    dout, inp, w = f32(rng, 9, 5), f32(rng, 9, 6), f32(rng, 5, 6)
    with_weight = ops.matmul_backward(dout, inp, w, compute_dinp=False, compute_dbias=False)[1]
    without = ops.matmul_backward(dout, inp, None, compute_dinp=False, compute_dbias=False)[1]
    np.testing.assert_array_equal(without, with_weight)
    with pytest.raises(TypeError, match=r"weight must be a numpy array of float32 \(OC, IC\), got NoneType"):
        ops.matmul_backward(dout, inp, None)


def _peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_adapter_part_makes_no_temporary_of_the_outputs_size(rng):
    N, IC, OC, r = 512, 64, 768, 4
    lora = LoRAWeight(Float32Weight(f32(rng, OC, IC)), r, 8.0)
    lora.lora_B.data = f32(rng, OC, r)
    lora.lora_A.data = f32(rng, r, IC)
    lora.lora_B.grad, lora.lora_A.grad = np.zeros((OC, r), np.float32), np.zeros((r, IC), np.float32)
    x, dout = f32(rng, N, IC), f32(rng, N, OC)
    y, peak = _peak(lambda: lora.forward(x))
    assert peak < 1.5 * y.nbytes, f"forward allocated {peak} bytes for a {y.nbytes}-byte output"
    dx, peak = _peak(lambda: lora.backward(dout))
    assert peak < 1.5 * dx.nbytes, f"backward allocated {peak} bytes for a {dx.nbytes}-byte dx"
    # and they are the adapted product and its gradient: sums of IC (OC) products, the adapter's r-term sums and
    # the adds, each rounded in float32
    A, B, W = (m.astype(np.float64) for m in (lora.lora_A.data, lora.lora_B.data, lora.base.data))
    full, bound = W + 2.0 * B @ A, np.abs(W) + 2.0 * np.abs(B) @ np.abs(A)
    assert np.all(np.abs(y - x @ full.T) <= (IC + 2 * r + 2) * EPS * (np.abs(x) @ bound.T))
    assert np.all(np.abs(dx - dout @ full) <= (OC + 2 * r + 2) * EPS * (np.abs(dout) @ bound))
