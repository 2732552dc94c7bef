"""GGUF block decoding under every ISA variant: every fp16 and bfloat16 bit pattern widened exactly; every block
type equal to the `gguf` package's dequantisation with its scales at the edges of fp16 (largest, subnormal, zero,
negative); the rows of a product that reads blocks in registers equal to those that widen them first."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer import ops
from pytransformer.opcases import BLOCK_LAYOUT, random_blocks

gguf = pytest.importorskip("gguf")
QT = gguf.GGMLQuantizationType


def test_every_half_and_bfloat16_widens_exactly(isa):
    bits = np.arange(1 << 16, dtype=np.uint16)
    for qtype, want in [("F16", bits.view(np.float16).astype(np.float32)),
                        ("BF16", (bits.astype(np.uint32) << 16).view(np.float32))]:
        got = ops.dequantize(ops.Quantized(bits.view(np.uint8).reshape(1, -1), qtype, (1, bits.size)))[0]
        nan = np.isnan(want)
        np.testing.assert_array_equal(np.isnan(got), nan, err_msg=qtype)
        np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32), err_msg=qtype)


@pytest.mark.parametrize("qtype", sorted(BLOCK_LAYOUT))
def test_every_block_type_dequantises_like_the_gguf_package_at_the_edges_of_fp16(isa, rng, qtype):
    values, size, scales = BLOCK_LAYOUT[qtype]
    data = random_blocks(rng, qtype, 8, 4 * 256)
    blocks = data.reshape(-1, size)
    edges = np.array([65504.0, -65504.0, 6e-8, -6e-8, 0.0, 6.1e-5, 1.0, -2.0], np.float16)  # (6e-8: subnormal)
    for at in scales:
        blocks[:, at:at + 2] = rng.choice(edges, (len(blocks), 1)).view(np.uint8)
    want = gguf.quants.dequantize(data, getattr(QT, qtype)).reshape(8, -1).astype(np.float64)
    got = ops.dequantize(ops.Quantized(data, qtype, (8, 4 * 256)))
    # float32 roundings of d sc q - dmin m in either order: within a few units of the block's largest term
    per_block = np.abs(want).reshape(-1, values).max(axis=1, keepdims=True)
    bound = np.repeat(per_block, values, axis=1).reshape(want.shape) * 2.0 ** -21
    assert np.all(np.abs(got - want) <= bound), qtype


@pytest.mark.parametrize("qtype", list(BLOCK_LAYOUT))
def test_blocks_read_in_registers_multiply_like_the_widened_rows(isa, rng, qtype):
    """N < 4 and 4..16 rows decode blocks in registers; more rows widen them with the row decode first: the same
    input rows give the same sums either way (up to the order and the grouping of the float32 additions)."""
    values, size, scales = BLOCK_LAYOUT[qtype]
    OC, IC = 37, 10 * values if values == 32 else 2 * values
    data = random_blocks(rng, qtype, OC, IC)
    w = ops.Quantized(data, qtype, (OC, IC))
    x = rng.standard_normal((40, IC)).astype(np.float32)
    widened = ops.matmul_forward(x, w)  # (40 rows: the widened GEMM)
    magnitude = np.abs(ops.dequantize(w).astype(np.float64))
    if qtype in ("Q4_1", "Q5_1"):  # few rows sum d v x and m x apart (x = d v + m): |d v| + |m| <= |x| + 2 |m|
        mins = data.reshape(-1, size)[:, 2:4].copy().view(np.float16).astype(np.float64)
        magnitude += 2 * np.abs(np.repeat(mins.reshape(OC, -1), values, axis=1))
    # each side a float32 sum of IC products: at most IC units of roundoff of the sum of magnitudes
    bound = 2 * IC * 2.0 ** -24 * (np.abs(x).astype(np.float64) @ magnitude.T)
    for n in (1, 3, 4, 9, 16):
        assert np.all(np.abs(ops.matmul_forward(x[:n], w) - widened[:n]) <= bound[:n]), n
