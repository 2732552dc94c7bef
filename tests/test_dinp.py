"""The gradient through a frozen weight kept in its own format (LoRA's base): ops.matmul_dinp and Weight.dinp for
float32, bfloat16 bits, int8 + row scale and every GGUF block type. The kernel widens W a row segment at a time with
the forward's decoders into the float32 GEMM's panels, so its numbers are those of the float32 dinp on the widened
matrix, bit for bit, and within float32 accumulation error of the float64 product. (The op-case registry checks
every form against reference.matmul_dinp on the exact float64 decoding: tests/test_op_cases.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import pytransformer
from pytransformer import _core, ops
from pytransformer import reference as ref
from pytransformer.nn import weights
from pytransformer.opcases import DINP_WEIGHTS, random_blocks

U = 2.0**-24  # float32 unit roundoff
FLOAT_FORMS = ("float32", "bfloat16", "int8", "F32", "F16", "BF16")


def stored(rng, kind, OC, IC):
    """(the weight as ops.matmul_dinp takes it, its weight_scale or None, its float32 widening (OC, IC))."""
    if kind in ops.QTYPES:
        w = ops.Quantized(random_blocks(rng, kind, OC, IC), kind, (OC, IC))
        return w, None, ops.dequantize(w)
    w = rng.standard_normal((OC, IC)).astype(np.float32)
    if kind == "int8":
        q, scale = ops.quantize_int8(w)
        return q, scale, q.astype(np.float32) * scale[:, None]  # (one rounding, as the kernel widens it)
    if kind == "bfloat16":
        bits = ops.to_bfloat16(w)
        return bits, None, ref.from_bfloat16(bits).astype(np.float32)  # (exact)
    return w, None, w


def ic_of(kind, blocks):
    """An input width of `blocks` blocks of the type (float forms: 1 + 32 blocks, not a multiple of 16)."""
    if kind in FLOAT_FORMS:
        return 1 + 32 * blocks
    return blocks * (32 if kind in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL") else 256)


@pytest.mark.parametrize("kind", DINP_WEIGHTS)
@pytest.mark.parametrize("N", [1, 3, 16, 37])
def test_dinp_is_within_float32_accumulation_of_the_float64_product(isa, rng, kind, N):
    """|ours - dout @ W~| <= gamma_OC (|dout| @ |W~|) elementwise (W~ the float32 widening, the product in float64):
    the bound of a float32 sum of OC products, each rounded once (Higham, 3.5)."""
    OC, IC = 70, ic_of(kind, 3)
    w, scale, wide = stored(rng, kind, OC, IC)
    dout = rng.standard_normal((N, OC)).astype(np.float32)
    got = ops.matmul_dinp(dout, w, weight_scale=scale)
    exact = dout.astype(np.float64) @ wide.astype(np.float64)
    gamma = OC * U / (1 - OC * U)
    bound = gamma * (np.abs(dout).astype(np.float64) @ np.abs(wide).astype(np.float64))
    assert got.shape == (N, IC) and np.all(np.abs(got - exact) <= bound), kind


@pytest.mark.parametrize("kind", DINP_WEIGHTS)
def test_dinp_equals_dequantise_then_float32_dinp_bit_for_bit(isa, rng, kind):
    """The same GEMM over the same widened values, summed in the same order: blocks never widened into a float32
    matrix give the very numbers of the float32 dinp on that matrix (rows past one GEMM tile, OC past one k-block,
    IC past one column block)."""
    w, scale, wide = stored(rng, kind, 400, ic_of(kind, 6 if ic_of(kind, 1) == 256 else 35))
    dout = rng.standard_normal((37, 400)).astype(np.float32)
    np.testing.assert_array_equal(ops.matmul_dinp(dout, w, weight_scale=scale), ops.matmul_dinp(dout, wide))


def test_the_same_bits_on_any_number_of_threads(rng):
    """Threads split columns (or rows): never a sum, so the numbers do not depend on the team size."""
    w, _, _ = stored(rng, "Q4_K", 300, 1536)
    dout = rng.standard_normal((40, 300)).astype(np.float32)
    before = pytransformer.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3, 8):
            pytransformer.set_num_threads(n)
            results.append(ops.matmul_dinp(dout, w))
    finally:
        pytransformer.set_num_threads(before)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_dinp_is_written_in_place_and_overwritten(rng):
    w, _, wide = stored(rng, "Q8_0", 9, 64)
    dout = rng.standard_normal((2, 5, 9)).astype(np.float32)
    dinp = np.full((2, 5, 64), np.nan, np.float32)
    assert ops.matmul_dinp(dout, w, dinp=dinp) is dinp
    np.testing.assert_array_equal(dinp, ops.matmul_dinp(dout, wide))


@pytest.mark.parametrize("N, IC, OC", [(0, 64, 9), (3, 64, 0), (3, 0, 9)])
def test_empty_sizes(rng, N, IC, OC):
    """No rows: nothing to do; no output channels: dinp is zero; no input channels: an empty dinp."""
    for kind in ("Q4_0", "int8", "bfloat16"):
        w, scale, _ = stored(rng, kind, OC, IC)
        got = ops.matmul_dinp(np.ones((N, OC), np.float32), w, weight_scale=scale,
                              dinp=np.full((N, IC), np.nan, np.float32))
        np.testing.assert_array_equal(got, np.zeros((N, IC), np.float32))


def test_every_weight_class_backpropagates_in_its_own_format(rng):
    """Weight.dinp of each narrow class is ops.matmul_dinp on what it stores, over any leading dimensions (a
    BlockWeight with int8 activations too: its gradient is float32)."""
    w32 = rng.standard_normal((24, 64)).astype(np.float32)
    dout = rng.standard_normal((2, 3, 24)).astype(np.float32)
    bf16, int8 = weights.BFloat16Weight.from_float32(w32), weights.Int8Weight.from_float32(w32)
    blocks = ops.Quantized(random_blocks(rng, "Q4_1", 24, 64), "Q4_1", (24, 64))
    for weight, wide in ((bf16, ref.from_bfloat16(bf16.bits).astype(np.float32)),
                         (int8, int8.q.astype(np.float32) * int8.scale[:, None]),
                         (weights.BlockWeight(blocks, "float32"), ops.dequantize(blocks)),
                         (weights.BlockWeight(blocks, "int8"), ops.dequantize(blocks))):
        got = weight.dinp(dout)
        assert got.shape == (2, 3, 64), weight
        np.testing.assert_array_equal(got, ops.matmul_dinp(dout, wide))


# --- hostile inputs: one-line errors naming the argument, never a crash ------------------------------------------


def one_line(excinfo):
    assert "\n" not in str(excinfo.value), str(excinfo.value)
    return str(excinfo.value)


@pytest.fixture
def q4(rng):
    return ops.Quantized(random_blocks(rng, "Q4_0", 8, 64), "Q4_0", (8, 64))


def test_wrong_shapes_are_refused(rng, q4):
    with pytest.raises(ValueError) as e:
        ops.matmul_dinp(np.zeros((3, 7), np.float32), q4)  # OC 8
    assert "dout" in one_line(e)
    with pytest.raises(ValueError) as e:
        ops.matmul_dinp(np.zeros((3, 8), np.float32), q4, dinp=np.zeros((3, 63), np.float32))
    assert "dinp" in one_line(e)
    with pytest.raises(ValueError) as e:
        ops.matmul_dinp(np.zeros((3, 8), np.float32), np.zeros(8, np.uint16))
    assert "weight" in one_line(e)


def test_wrong_dtypes_and_scales_are_refused(rng, q4):
    q, scale = ops.quantize_int8(rng.standard_normal((8, 64)).astype(np.float32))
    g = np.zeros((3, 8), np.float32)
    for call, name in [(lambda: ops.matmul_dinp(g.astype(np.float64), q4), "dout"),
                       (lambda: ops.matmul_dinp(g, q), "weight_scale"),
                       (lambda: ops.matmul_dinp(g, q4, weight_scale=scale), "weight_scale"),
                       (lambda: ops.matmul_dinp(g, q, weight_scale=scale[:7]), "weight_scale"),
                       (lambda: ops.matmul_dinp(g, q, weight_scale=scale.astype(np.float64)), "weight_scale"),
                       (lambda: ops.matmul_dinp(g, q4, dinp=np.zeros((3, 64), np.float64)), "dinp")]:
        with pytest.raises((TypeError, ValueError)) as e:
            call()
        assert name in one_line(e)


def test_non_contiguous_arrays_are_refused(rng, q4):
    g = np.zeros((3, 16), np.float32)[:, ::2]
    with pytest.raises(ValueError) as e:
        ops.matmul_dinp(g, q4)
    assert "dout" in one_line(e) and "C-contiguous" in str(e.value)
    with pytest.raises(ValueError) as e:
        ops.matmul_dinp(np.zeros((3, 8), np.float32), q4, dinp=np.zeros((3, 128), np.float32)[:, ::2])
    assert "dinp" in one_line(e)
    bits = np.zeros((8, 128), np.uint16)[:, ::2]
    with pytest.raises(ValueError) as e:
        ops.matmul_dinp(np.zeros((3, 8), np.float32), bits)
    assert "weight" in one_line(e)


def test_an_output_laid_over_an_input_is_refused(rng):
    """dinp over dout, the weight's bytes or its scale: the kernel would read what it has overwritten. Refused by
    ops (by name) and by the raw binding (by address) alike."""
    buf = np.zeros(4096, np.float32)
    g = buf[:24].reshape(3, 8)
    with pytest.raises(ValueError) as e:
        ops.matmul_dinp(g, np.zeros((8, 64), np.float32), dinp=buf[16:16 + 192].reshape(3, 64))
    assert "dout" in one_line(e)
    raw = np.zeros(4096, np.uint8)
    data = raw[:8 * 36].reshape(8, 36)  # Q4_0: 2 blocks of 18 bytes a row
    with pytest.raises(ValueError) as e:
        ops.matmul_dinp(np.ones((3, 8), np.float32), ops.Quantized(data, "Q4_0", (8, 64)),
                        dinp=raw[:768].view(np.float32).reshape(3, 64))
    assert "weight" in one_line(e) or "data" in str(e.value)
    scale = buf[1000:1008]
    with pytest.raises(ValueError) as e:
        ops.matmul_dinp(np.ones((3, 8), np.float32), np.zeros((8, 64), np.int8), weight_scale=scale,
                        dinp=buf[960:1152].reshape(3, 64))
    assert "weight_scale" in one_line(e)
    # the raw kernels check the same by address
    with pytest.raises(ValueError, match="dinp overlaps dout"):
        _core.matmul_q_dinp(buf[8:200].reshape(3, 64), buf[:24].reshape(3, 8), np.zeros((8, 36), np.uint8), 2, 3,
                            64, 8)
    with pytest.raises(ValueError, match="dinp overlaps weight_scale"):
        _core.matmul_w8_dinp(buf[:192], np.ones(24, np.float32), np.zeros((8, 64), np.int8), buf[100:108], 3, 64, 8)


def test_the_raw_kernels_refuse_unknown_types_and_partial_blocks(rng):
    g, out = np.zeros((3, 8), np.float32), np.zeros((3, 64), np.float32)
    for qtype, IC in [(5, 64), (2, 63), (2**40, 64)]:  # (no type 5; Q4_0 rows of whole 32-value blocks)
        with pytest.raises(ValueError) as e:
            _core.matmul_q_dinp(out, g, np.zeros((8, 36), np.uint8), qtype, 3, IC, 8)
        assert "GGUF type" in one_line(e)
