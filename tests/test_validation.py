"""Bad input raises TypeError/ValueError naming the argument; outputs are written in place, never copied."""

from __future__ import annotations

import re

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


def test_an_attention_window_is_a_positive_int_with_causal_attention(rng):
    q = f32(rng, 2, 1, 3, 4)
    with pytest.raises(ValueError, match=r"window must be 0 \(none\) or, with causal attention, a positive number "
                                         r"of keys; got -1 \(causal=True\)"):
        ops.attention_forward(q, q, q, True, window=-1)
    with pytest.raises(ValueError, match=r"got 2 \(causal=False\)"):
        ops.attention_backward(q, q, q, q, q, f32(rng, 2, 1, 3), False, window=2)
    with pytest.raises(TypeError, match="window must be an int"):
        ops.attention_forward(q, q, q, True, window=2.5)
    big, _ = ops.attention_forward(q, q, q, True, window=10**12)  # (longer than the keys: no window)
    np.testing.assert_array_equal(big, ops.attention_forward(q, q, q, True)[0])


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


def recorded_core_calls():
    """kernel name -> the positional arguments of its first call made by the op-case registry's "check" cases."""
    from pytransformer import opcases

    names = [n for n in dir(_core) if not n.startswith("_") and callable(getattr(_core, n))
             and not isinstance(getattr(_core, n), type)]
    calls = {}

    def recorder(name, fn):
        def call(*args):
            calls.setdefault(name, args)
            return fn(*args)
        return call

    rng = np.random.default_rng(0)
    with pytest.MonkeyPatch.context() as mp:
        for name in names:
            mp.setattr(_core, name, recorder(name, getattr(_core, name)))
        for case in opcases.cases("check"):
            case.spec.ours(case.make(rng), case.o)
    return {name: args for name, args in calls.items() if any(isinstance(a, np.ndarray) for a in args)}


CORE_CALLS = recorded_core_calls()  # (the kernels: calls with arrays)


def size_positions(args):
    """The sizes of a kernel call: the ints after its last array (or None for an omitted array). (Also an
    ignore_index, a seed or a step: any value of those is fine, so they are swept too.)"""
    last = max(i for i, a in enumerate(args) if a is None or isinstance(a, np.ndarray))
    return [i for i in range(last + 1, len(args)) if type(args[i]) is int]


def with_sizes(args, sizes):
    """args with every array emptied (same dtype) and the sizes at their positions replaced."""
    args = [np.empty(0, a.dtype) if isinstance(a, np.ndarray) else a for a in args]
    for i, s in sizes.items():
        args[i] = s
    return args


@pytest.mark.parametrize("name", sorted(CORE_CALLS))
def test_core_refuses_sizes_whose_products_overflow(name):
    """A product of sizes that wraps around int64 (2**62 x 4 = 0) matched empty arrays and handed the kernel sizes
    far beyond them (a segfault). Each size huge in turn, and all of them large together, is a ValueError."""
    fn, args = getattr(_core, name), CORE_CALLS[name]
    positions = size_positions(args)
    assert positions, name
    attempts = [{i: 2**62 if i == j else 256 for i in positions} for j in positions]
    attempts += [dict.fromkeys(positions, s) for s in (2**16, 2**21, 2**32, 2**62)]
    for sizes in attempts:
        with pytest.raises(ValueError):
            fn(*with_sizes(args, sizes))


@pytest.mark.parametrize("name", sorted(CORE_CALLS))
def test_core_takes_a_huge_size_times_zero_as_nothing_to_do(name):
    """A huge size times a zero describes empty arrays: the kernel returns at once (or the call is refused), never
    a crash or a loop over the huge size."""
    fn, args = getattr(_core, name), CORE_CALLS[name]
    for j in size_positions(args):
        try:
            fn(*with_sizes(args, {i: 2**62 if i == j else 0 for i in size_positions(args)}))
        except ValueError:
            pass


def test_every_core_function_that_takes_sizes_is_swept():
    def takes_ints(fn):
        return re.search(r": (int|typing.SupportsInt)\b", fn.__doc__.splitlines()[0]) is not None

    with_ints = {n for n in dir(_core) if not n.startswith("_") and callable(getattr(_core, n))
                 and not isinstance(getattr(_core, n), type) and takes_ints(getattr(_core, n))}
    # (the rest: a thread count, the benchmark probes' loop counts, quant_row_bytes, can_pack and pack_rows (made on
    # AVX512-VNNI only), checked below)
    assert with_ints - set(CORE_CALLS) == {"set_num_threads", "fma_probe", "amx_probe", "int8_dot_probe",
                                           "quant_row_bytes", "can_pack", "pack_rows"}


def test_core_private_entry_points_check_their_sizes():
    with pytest.raises(ValueError, match="overflow"):
        _core.quant_row_bytes(0, 2**62)  # F32: 4 bytes a value
    assert _core.quant_row_bytes(2, 2**62) == 2**62 // 32 * 18  # (no overflow: fewer bytes than values)
    for probe in (_core.fma_probe, _core.amx_probe, _core.int8_dot_probe):
        with pytest.raises(ValueError):
            probe(-1)
    assert not _core.can_pack(2, 2**62 + 8) and _core.can_pack(2, 2**62)
    u8 = np.empty((0, 0), np.uint8)
    for OC, IC in [(2**62, 32), (16, 2**62), (2**60, 2**40), (-16, 32), (16, -32)]:
        with pytest.raises(ValueError):
            _core.pack_rows(u8, u8, 2, OC, IC)
    e = np.empty(0, np.float32)

    def plan(dims, layers=(), final_norm=(e, None), head=(-1, e, None, 0, 0, None)):
        description = dict(zip(("C", "NH", "NKV", "HS", "F", "V"), dims), eps=1e-5, attn_scale=1.0, layernorm=False,
                           rotary=True, interleaved=False, gated=True, activation=0)
        return _core.DecodePlan(description, list(layers), final_norm, head)

    empty = (-1, e, None, 0, 0, None)
    with pytest.raises(ValueError, match="overflow"):  # (NH + 2 NKV) x HS q|k|v rows
        plan((0, 2**62, 2**61, 2, 0, 0), [dict(attn_norm=(e, None), qkv=[], o=empty, ffn_norm=(e, None), up=[],
                                               down=empty)])
    with pytest.raises(ValueError, match="overflow"):  # the head's OC x IC
        plan((4, 1, 1, 2, 1, 4), final_norm=(np.ones(4, np.float32), None), head=(-1, e, None, 2**62, 4, None))
    with pytest.raises(ValueError, match="even head size"):  # HS = 0 divided the cache size by zero in step()
        plan((4, 1, 1, 0, 4, 4))


def test_core_refuses_an_output_laid_over_the_indices_it_reads(rng):
    """The raw kernels check indices (ids, targets, positions) in range before they run; an output over them would
    rewrite them mid-kernel and read out of bounds with them (a segfault), so the binding refuses it too."""
    raw = np.zeros(64 * 4 * 8, np.uint8)
    ids, out = raw[:64].view(np.int64), raw.view(np.float32)[:64].reshape(8, 8)  # out's first rows over ids
    table = f32(rng, 8, 8)
    with pytest.raises(ValueError, match="out overlaps ids"):
        _core.embedding_forward(out, ids, table, 8, 8, 8)
    with pytest.raises(ValueError, match="dtable overlaps ids"):
        _core.embedding_backward(out, f32(rng, 8, 8), ids, 8, 8, 8)
    with pytest.raises(ValueError, match="losses overlaps targets"):
        _core.crossentropy_forward(out[0], np.empty(8, np.float32), table, ids, 8, 8, -100, 0.0)
    with pytest.raises(ValueError, match="dlogits overlaps targets"):
        _core.crossentropy_backward(out, table, np.zeros(8, np.float32), ids, 1.0, 8, 8, -100, 0.0)
    cos = sin = np.ones((8, 4), np.float32)
    with pytest.raises(ValueError, match="out overlaps positions"):
        _core.rope_forward(out.reshape(8, 1, 8), f32(rng, 8, 1, 8), cos, sin, ids, 8, 1, 8, 8, False)
    with pytest.raises(ValueError, match="out overlaps ids"):
        _core.dequantize_rows(out, f32(rng, 8, 8).view(np.uint8), 0, ids, 8, 8, 8)
