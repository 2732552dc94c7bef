"""The "bfloat16" matmul precision (AMX): Linear and attention products of bf16-rounded inputs, float32 sums.

The spec is reference.round_bfloat16 applied to both inputs, then the float64 product: the kernel must match it
to float32 summation error, so a wrong tile layout, a missed edge or an unrounded input all fail.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import pytransformer
from pytransformer import ops
from pytransformer import reference as R
from pytransformer.opcases import random_blocks

from conftest import assert_close, f32

HAVE_AMX = pytransformer.cpu_info()["amx_bf16"]
needs_amx = pytest.mark.skipif(not HAVE_AMX, reason="this CPU/OS has no usable AMX-BF16")

# tile edges (16 rows/columns, 32 k), odd sizes, one row, and the GPT shapes
SHAPES = [(1, 1, 1), (3, 5, 7), (16, 32, 16), (17, 33, 31), (31, 64, 47), (64, 100, 96), (100, 300, 50),
          (2, 768, 65), (130, 384, 1152), (257, 1536, 384)]


@pytest.fixture
def bf16():
    with pytransformer.matmul_precision("bfloat16"):
        yield


@needs_amx
@pytest.mark.parametrize("N,IC,OC", SHAPES)
def test_forward_matches_bf16_rounded_reference(bf16, rng, N, IC, OC):
    x, w, b = f32(rng, N, IC), f32(rng, OC, IC), f32(rng, OC)
    out = ops.matmul_forward(x, w, b)
    assert_close(out, R.matmul_forward(R.round_bfloat16(x), R.round_bfloat16(w), b), 2e-6 * max(1, IC / 64) ** 0.5,
                 "forward")


@needs_amx
@pytest.mark.parametrize("N,IC,OC", SHAPES)
def test_backward_matches_bf16_rounded_reference(bf16, rng, N, IC, OC):
    x, w, g = f32(rng, N, IC), f32(rng, OC, IC), f32(rng, N, OC)
    dw0, db0 = f32(rng, OC, IC), f32(rng, OC)
    dinp, dweight, dbias = ops.matmul_backward(g, x, w, dweight=dw0.copy(), dbias=db0.copy())
    rdx, rdw, _ = R.matmul_backward(R.round_bfloat16(g), R.round_bfloat16(x), R.round_bfloat16(w))
    tol = 2e-6 * max(1, max(N, OC) / 64) ** 0.5
    assert_close(dinp, rdx, tol, "dinp")
    assert_close(dweight, dw0 + rdw, tol, "dweight accumulates")
    # the bias gradient is a float32 column sum of the unrounded dout
    assert_close(dbias, db0 + g.astype(np.float64).sum(0), 1e-6 * max(1, N / 64) ** 0.5, "dbias")


@needs_amx
def test_bf16_is_really_used_and_differs_from_float32(rng):
    x, w = f32(rng, 64, 256), f32(rng, 96, 256)
    full = ops.matmul_forward(x, w)
    with pytransformer.matmul_precision("bfloat16"):
        half = ops.matmul_forward(x, w)
    exact = R.matmul_forward(x, w)
    assert_close(full, exact, 2e-6, "float32")
    err = np.abs(half - exact).max() / np.abs(exact).max()
    assert 1e-4 < err < 2e-2, f"bf16 error {err:.3g} is not what rounding to 8 bits of mantissa gives"


@needs_amx
def test_writes_out_in_place_and_thread_counts_agree(bf16, rng):
    x, w, b = f32(rng, 200, 96), f32(rng, 80, 96), f32(rng, 80)
    out = np.full((200, 80), np.nan, np.float32)
    assert ops.matmul_forward(x, w, b, out=out) is out
    before = pytransformer.get_num_threads()
    try:
        pytransformer.set_num_threads(1)
        one = ops.matmul_forward(x, w, b)
    finally:
        pytransformer.set_num_threads(before)
    np.testing.assert_array_equal(out, one)  # every C tile sums the whole k range in one place


@needs_amx
def test_two_python_threads_at_once(bf16, rng):
    xs = [f32(rng, 300, 128) for _ in range(2)]
    w = f32(rng, 200, 128)
    want = [ops.matmul_forward(x, w) for x in xs]
    got = [None, None]

    def run(i):
        with pytransformer.matmul_precision("bfloat16"):  # the setting is process-wide; both set the same
            for _ in range(20):
                got[i] = ops.matmul_forward(xs[i], w)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, e in zip(got, want):
        np.testing.assert_array_equal(g, e)


def test_precision_setting_is_checked_and_restored():
    assert pytransformer.get_matmul_precision() == "float32"
    with pytest.raises(ValueError, match="float32"):
        pytransformer.set_matmul_precision("float16")
    with pytest.raises(TypeError):
        pytransformer.set_matmul_precision(16)
    if HAVE_AMX:
        with pytransformer.matmul_precision("bfloat16"):
            assert pytransformer.cpu_info()["matmul_precision"] == "bfloat16"
        assert pytransformer.get_matmul_precision() == "float32"
    else:
        with pytest.raises(RuntimeError, match="AMX"):
            pytransformer.set_matmul_precision("bfloat16")


def test_round_bfloat16_reference():
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.5, 1e-30, 3.0e38], np.float32)
    r = R.round_bfloat16(x)
    # ties to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> 1; 1 + 3 * 2^-8 -> 1 + 2^-6
    np.testing.assert_array_equal(r[:4], [1.0, 1.0, 1 + 2**-6, -2.5])
    assert abs(r[4] - 1e-30) / 1e-30 < 2**-7 and abs(r[5] - 3.0e38) / 3.0e38 < 2**-8


# --- attention under the bfloat16 precision: its products on tiles, softmax and sums in float32 -------------
# The error budget is bf16's: q, k rounded (2^-9 relative each) move the scores, and the probabilities are
# rounded before P V. 2e-2 of the largest reference value is ~5x what these shapes show; a wrong tile layout,
# mask or transposition gives errors of order 1.

ATTENTION_SHAPES = [(2, 3, 17, 17, 8, True, False), (1, 2, 5, 70, 20, True, True), (2, 4, 65, 33, 16, False, True),
                    (1, 2, 130, 130, 64, True, False), (2, 2, 64, 64, 64, False, False)]


@needs_amx
@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
@pytest.mark.parametrize("B,NH,Tq,Tk,HS,causal,masked", ATTENTION_SHAPES)
def test_attention_in_bf16_matches_reference(bf16, rng, B, NH, Tq, Tk, HS, causal, masked, layout):
    q, k, v, g = f32(rng, B, NH, Tq, HS), f32(rng, B, NH, Tk, HS), f32(rng, B, NH, Tk, HS), f32(rng, B, NH, Tq, HS)
    mask = (rng.random((B, Tk)) < 0.7) if masked else None
    t = (lambda a: np.ascontiguousarray(a.transpose(0, 2, 1, 3))) if layout == "bthd" else (lambda a: a)
    out, lse = ops.attention_forward(t(q), t(k), t(v), causal, mask, layout=layout)
    grads = ops.attention_backward(t(g), t(q), t(k), t(v), out, lse, causal, mask, layout=layout)
    want_out, want_lse = R.attention_forward(q, k, v, causal, mask)
    want = R.attention_backward(g, q, k, v, want_out, want_lse, causal, mask)
    assert_close(t(out), want_out, 2e-2, "out")
    seen = np.isfinite(want_lse)
    np.testing.assert_array_equal(np.isfinite(lse), seen)
    np.testing.assert_allclose(lse[seen], want_lse[seen], atol=2e-2)
    for name, a, e in zip(("dq", "dk", "dv"), grads, want):
        assert_close(t(a), e, 2e-2, name, floor=1e-3)


@needs_amx
def test_attention_bf16_path_is_taken(rng):
    q, k, v = (f32(rng, 1, 2, 40, 32) for _ in range(3))
    full, _ = ops.attention_forward(q, k, v, True)
    with pytransformer.matmul_precision("bfloat16"):
        half, _ = ops.attention_forward(q, k, v, True)
    want = R.attention_forward(q, k, v, True)[0]
    assert_close(full, want, 2e-5, "float32")
    err = np.abs(half - want).max() / np.abs(want).max()
    assert 1e-4 < err < 2e-2, f"bf16 attention error {err:.3g}"


# bfloat16 weights under the bf16 precision: from 16 rows on tiles (the input rounded, the bits taken as they are),
# fewer rows (decoding) on the AVX-512 products with the input exact
W16_SHAPES = [(15, 33, 31), (16, 33, 31), (17, 63, 65), (64, 100, 96), (130, 384, 1152), (257, 1536, 576)]


def _w16_spec(x, bits):
    """The bf16 precision's product spec for a bf16 weight: x rounded from 16 rows on, the weight exact."""
    return R.round_bfloat16(x) if len(x) >= 16 else x, R.from_bfloat16(bits)


@needs_amx
@pytest.mark.parametrize("N,IC,OC", W16_SHAPES)
def test_bf16_weight_forward_matches_reference(bf16, rng, N, IC, OC):
    x, bits, b = f32(rng, N, IC), ops.to_bfloat16(f32(rng, OC, IC)), f32(rng, OC)
    rx, rw = _w16_spec(x, bits)
    assert_close(ops.matmul_forward(x, bits, b), R.matmul_forward(rx, rw, b), 2e-6 * max(1, IC / 64) ** 0.5,
                 "forward")


@needs_amx
@pytest.mark.parametrize("N,IC,OC", W16_SHAPES)
def test_bf16_weight_dinp_matches_reference(bf16, rng, N, IC, OC):
    dout, bits = f32(rng, N, OC), ops.to_bfloat16(f32(rng, OC, IC))
    rd, rw = _w16_spec(dout, bits)
    dinp = np.full((N, IC), np.nan, np.float32)
    assert ops.matmul_dinp(dout, bits, dinp=dinp) is dinp
    assert_close(dinp, rd @ rw, 2e-6 * max(1, OC / 64) ** 0.5, "dinp")


@needs_amx
def test_bf16_weights_take_the_tiles_only_under_the_bf16_precision(rng):
    """The rounding of the input is visible from 16 rows under the precision, and absent without it."""
    x, bits = f32(rng, 64, 256), ops.to_bfloat16(f32(rng, 96, 256))
    exact = R.matmul_forward(x, R.from_bfloat16(bits))
    assert_close(ops.matmul_forward(x, bits), exact, 2e-6, "float32 precision")
    assert_close(ops.matmul_dinp(x[:, :96].copy(), bits), x[:, :96] @ R.from_bfloat16(bits), 2e-6, "float32 dinp")
    with pytransformer.matmul_precision("bfloat16"):
        err = np.abs(ops.matmul_forward(x, bits) - exact).max() / np.abs(exact).max()
    assert 1e-4 < err < 2e-2, f"bf16 error {err:.3g} is not what rounding the input to 8 bits of mantissa gives"


@needs_amx
def test_block_dinp_is_unchanged_by_the_bf16_precision(rng):
    """Only bf16 rows take the tiles: a GGUF block weight's dinp is the float32 kernel's, bit for bit."""
    w = ops.Quantized(random_blocks(rng, "Q8_0", 64, 256), "Q8_0", (64, 256))
    dout = f32(rng, 40, 64)
    plain = ops.matmul_dinp(dout, w)
    with pytransformer.matmul_precision("bfloat16"):
        np.testing.assert_array_equal(ops.matmul_dinp(dout, w), plain)
