"""KV caches of halves (generate.KVCache "float16"): rows rounded to the nearest half as they are written (the plan's
writes and ops.write_rows alike), widened exactly as they are read, so attention over a cache of halves is attention
over their float32 copies, bit for bit, on every path (decoding rows, split keys, tiles), ISA, thread count and
matmul precision; which models get one by default; generation over one against float32 caches."""

from __future__ import annotations

import numpy as np
import pytest

import pytransformer
from pytransformer import ops
from pytransformer.generate import KVCache
from pytransformer.models import Llama, LlamaConfig
from conftest import switched

# (B, NH, NKV, Tq, Tk, HS, window): decoding rows, a long row split across threads, tiles; grouped heads, windows
SHAPES = [(2, 4, 2, 1, 70, 17, 0), (1, 9, 3, 1, 3000, 64, 0), (1, 4, 1, 3, 1500, 256, 0), (2, 6, 2, 70, 130, 16, 0),
          (1, 2, 1, 1, 2000, 8, 700), (2, 4, 4, 65, 65, 63, 20), (1, 2, 2, 130, 200, 33, 0)]


@pytest.fixture(params=[1, 3], ids=["1thread", "3threads"])
def threads(request):
    yield from switched(request, pytransformer.get_num_threads, pytransformer.set_num_threads)


def halves(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float16)


@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_attention_over_halves_is_attention_over_their_float32_copies(isa, threads, precision, rng, shape, layout):
    B, NH, NKV, Tq, Tk, HS, window = shape
    Tkv = Tk + 7  # (a cache holding more rows than are in use)
    heads = (lambda n, T: (B, n, T, HS)) if layout == "bhtd" else (lambda n, T: (B, T, n, HS))
    q = rng.standard_normal(heads(NH, Tq)).astype(np.float32)
    k, v = halves(rng, heads(NKV, Tkv), 2.0), halves(rng, heads(NKV, Tkv))
    mask = rng.random((B, Tk)) > 0.2
    for causal, key_mask in ((True, None), (True, mask), (False, mask)):
        w = window if causal else 0
        got = ops.attention_forward(q, k, v, causal, key_mask, layout=layout, kv_len=Tk, window=w)
        want = ops.attention_forward(q, k.astype(np.float32), v.astype(np.float32), causal, key_mask, layout=layout,
                                     kv_len=Tk, window=w)
        for g, e in zip(got, want):
            np.testing.assert_array_equal(g, e)


def test_rows_are_rounded_to_the_nearest_half_and_saturated(isa, rng):
    """float16_from_float (the plan's cache writes; ops.write_rows): NumPy's float16 cast (round to nearest, ties to
    even; subnormals) of the value saturated at +-65504 (a finite float stays finite); inf and NaN stay."""
    h = rng.integers(0, 0x7BFF, 5000).astype(np.uint16).view(np.float16).astype(np.float32)  # finite halves < 65504
    nxt = np.nextafter(h.astype(np.float16), np.float16(np.inf)).astype(np.float32)
    wide = rng.standard_normal(3000) * 10.0 ** rng.integers(-9, 7, 3000)  # (subnormal halves to overflowing ones)
    special = [65504, 65519.9, 65520, 1e6, 3e38, 2.9e-8, 3e-8, np.inf, -np.inf, np.nan, -0.0]
    x = np.concatenate([h, (h + nxt) / 2, h + (nxt - h) * 0.499, wide, special]).astype(np.float32)  # (ties: to even)
    x = np.concatenate([x, -x])
    got = np.empty(x.size, np.float16)
    pytransformer._core.float16_from_float(got, x, x.size)
    finite = np.isfinite(x)
    want = np.where(finite, np.clip(x, -65504, 65504), x).astype(np.float16)
    np.testing.assert_array_equal(got.view(np.uint16)[~np.isnan(x)], want.view(np.uint16)[~np.isnan(x)])
    assert np.isnan(got[np.isnan(x)]).all() and np.isfinite(got[finite]).all()
    cache = np.zeros((2, 9, 3, 5), np.float16)
    rows = (rng.standard_normal((2, 4, 3, 5)) * 3e4).astype(np.float32)
    ops.write_rows(cache, 3, rows)
    np.testing.assert_array_equal(cache[:, 3:7], np.clip(rows, -65504, 65504).astype(np.float16))
    assert not cache[:, :3].any() and not cache[:, 7:].any()


def test_bad_caches_are_refused():
    q = np.zeros((1, 2, 1, 8), np.float32)
    k = np.zeros((1, 2, 4, 8), np.float16)
    with pytest.raises(TypeError, match="v must be float16"):
        ops.attention_forward(q, k, np.zeros((1, 2, 4, 8), np.float32))
    with pytest.raises(ValueError, match="'float32' or 'float16'"):
        KVCache(1, 1, 4, 2, 8, dtype="bfloat16")
    with pytest.raises(ValueError, match="float16 KV cache lives on the CPU"):
        KVCache(1, 1, 4, 2, 8, device="cuda", dtype="float16")
    with pytest.raises(TypeError, match="float16"):
        pytransformer._core.float16_from_float(np.zeros(3, np.float32), np.zeros(3, np.float32), 3)


def _llama(int8):
    model = Llama(LlamaConfig(vocab_size=64, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=96,
                              tie_word_embeddings=False), seed=2).eval()
    return model.set_weight_dtype("int8").set_activation_dtype("int8") if int8 else model


def test_int8_activations_choose_a_cache_of_halves_and_float32_activations_keep_float32():
    model = _llama(int8=True)
    assert model.cache_dtype() == "float16" and model.new_cache(1, 4).k[0].dtype == np.float16
    assert model.new_slots(2, 4)[0][0].dtype == np.float16
    assert model.set_activation_dtype("float32").new_cache(1, 4).k[0].dtype == np.float32  # (the exact path)
    assert _llama(int8=False).new_cache(1, 4).v[1].dtype == np.float32
    model.set_kv_cache_dtype("float16")
    assert model.new_cache(1, 4).k[0].dtype == np.float16  # (asked for: kept whatever the activations)
    assert model.set_kv_cache_dtype(None).new_cache(1, 4).k[0].dtype == np.float32
    with pytest.raises(ValueError, match="'float32' or 'float16'"):
        model.set_kv_cache_dtype("int8")


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_generation_over_halves_follows_float32_caches(threads, rng):
    """The plan's decode step over a cache of halves equals the layers' path over it (the same rounding on write),
    and both stay within the halves' rounding of a float32 cache: each key and value is off by at most 2^-11 of
    itself (relative rounding of a half), and the logits, through two layers of such attention, by less than 2^-11 of
    their largest (here ~2^-13.5)."""
    model = _llama(int8=False).set_kv_cache_dtype("float16")
    ids = rng.integers(0, 64, (1, 70))
    with model.evaluating():
        a, b, c = model.new_cache(1, 80), model.new_cache(1, 80), model.set_kv_cache_dtype("float32").new_cache(1, 80)
        for cache in (a, b, c):
            model(ids, cache=cache)
        np.testing.assert_array_equal(a.k[1][:, :70], b.k[1][:, :70])
        np.testing.assert_array_equal(a.k[0][:, :70], c.k[0][:, :70].astype(np.float16))  # (the first layer's)
        want = model(ids[:, :1], cache=b)  # (the plan)
        model.decode_in_cpp = False
        got = model(ids[:, :1], cache=a)  # (the layers)
        exact = model(ids[:, :1], cache=c)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    err = np.abs(got - exact).max() / np.abs(exact).max()
    assert 0 < err < 2 ** -11, err
