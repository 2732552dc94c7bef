"""Outputs never silently overlap inputs: every array an op writes is checked against every other argument of the
call (inputs, outputs, index arrays, masks, a quantised weight's blocks) by memory bounds, whatever the dtypes;
only the documented in-place calls (the very same array) are accepted, and they give the out-of-place result.

The calls swept are the op-case registry's own (pytransformer/opcases.py: every op's "check" cases, recorded as
they run), plus the few ops the registry does not reach; so a new op or a new argument is swept without an edit
here."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from pytransformer import ops, opcases


def writing_ops():
    """name -> every public op of ops.py that writes into arrays it is handed (declared with ops._writes)."""
    return {name: fn for name, fn in vars(ops).items() if not name.startswith("_") and hasattr(fn, "writes")}


def extra_calls(rng):
    """Calls of the writing ops the registry does not make: (fn name, bound arguments)."""
    x, y = opcases.f32(rng, 9, 5), opcases.f32(rng, 9, 5)
    return [("tanh_forward", {"inp": x}), ("tanh_backward", {"dout": y, "out": np.tanh(x)}),
            ("add_into", {"dst": y.copy(), "src": x}), ("scale_", {"x": y.copy(), "factor": 0.5})]


def recorded_calls():
    """[(label, fn name, bound arguments)]: the first call of each writing op (per set of arguments and their kinds:
    a float32, bfloat16, int8 or quantised weight) made by the registry's "check" cases, plus extra_calls."""
    fns, calls, seen = writing_ops(), [], set()

    def recorder(name, fn):
        def call(*args, **kwargs):
            bound = inspect.signature(fn).bind(*args, **kwargs).arguments
            key = (name, tuple((n, type(v), getattr(v, "dtype", None)) for n, v in bound.items() if v is not None))
            if key not in seen:
                seen.add(key)
                calls.append((f"{case.op}:{name}", name, dict(bound)))
            return fn(*args, **kwargs)
        return call

    rng = np.random.default_rng(0)
    with pytest.MonkeyPatch.context() as mp:
        for name, fn in fns.items():
            mp.setattr(ops, name, recorder(name, fn))
        for case in opcases.cases("check"):
            case.spec.ours(case.make(rng), case.o)
    return calls + [(f"extra:{name}", name, args) for name, args in extra_calls(rng)]


CALLS = recorded_calls()


def arrays_of(value):
    return value.data if isinstance(value, ops.Quantized) else value


def overlapping(value, shape, dtype, shift_bytes):
    """(a copy of value, an array of shape/dtype) laid over one buffer, the second starting shift_bytes into the
    first: an overlap whatever the two dtypes. A Quantized value is copied with its blocks in the buffer."""
    blocks = arrays_of(value)
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(max(blocks.nbytes, shift_bytes + size) + 64, np.uint8)
    first = raw[: blocks.nbytes].view(blocks.dtype).reshape(blocks.shape)
    first[...] = blocks
    second = raw[shift_bytes: shift_bytes + size].view(dtype).reshape(shape)
    if isinstance(value, ops.Quantized):
        first = ops.Quantized(first, value.qtype, value.shape)
    return first, second


def written_arrays(name, args):
    """name of each array the call writes -> (shape, dtype), from the call made without outputs."""
    fn = writing_ops()[name]
    result = fn(**{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()})
    results = [r for r in (result if isinstance(result, tuple) else (result,)) if isinstance(r, np.ndarray)]
    assert len(results) == len(fn.writes), name
    return {w: (r.shape, r.dtype) for w, r in zip(fn.writes, results)}


def pairs():
    """(label, fn name, args, written name, other argument name, shift) for every array written and every other
    array argument of every call, at a partial overlap (4 bytes in) and at the same start through another view
    (unless that view is the very same array of a documented in-place pair)."""
    out = []
    for label, name, args in CALLS:
        fn, shapes = writing_ops()[name], written_arrays(name, args)
        others = [n for n, v in args.items() if isinstance(v, (np.ndarray, ops.Quantized))] + list(fn.writes)
        for w in fn.writes:
            for other in dict.fromkeys(others):
                blocks = arrays_of(args.get(other))
                value = shapes[other] if other in shapes else (blocks.shape, blocks.dtype)
                in_place = (w, other) in fn.same or (other, w) in fn.same
                for shift in (4, 0):
                    if other != w and not (shift == 0 and in_place and value == shapes[w]):
                        out.append((label, name, args, w, other, shift))
    return out


PAIRS = pairs()


@pytest.mark.parametrize("label,name,args,written,other,shift", PAIRS,
                         ids=[f"{p[0]}-{p[3]}-over-{p[4]}-at-{p[5]}" for p in PAIRS])
def test_an_output_overlapping_any_other_argument_is_refused(label, name, args, written, other, shift):
    shapes = written_arrays(name, args)
    call = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    value = call[other] if other in call else np.zeros(*shapes[other])  # (another output, handed in too)
    call[other], call[written] = overlapping(value, *shapes[written], shift)
    with pytest.raises(ValueError, match=f"{written} overlaps {other}|{other} overlaps {written}"):
        writing_ops()[name](**call)


def test_the_sweep_reaches_every_op_that_writes_and_every_kind_of_argument():
    assert {name for _, name, _ in CALLS} == set(writing_ops())
    swept = {(name, w, o) for _, name, _, w, o, _ in PAIRS}
    assert {("rope_forward", "out", "positions"), ("rope_backward", "dinp", "positions"),
            ("attention_forward", "out", "key_mask"), ("embedding_forward", "out", "ids"),
            ("dequantize", "out", "weight"), ("adamw_step", "params", "grads")} <= swept
    assert any(name == "matmul_forward" and o == "weight" and isinstance(args["weight"], ops.Quantized)
               for _, name, args, _, o, _ in PAIRS)


IN_PLACE = [(label, name, args, w, a) for label, name, args in CALLS for w, a in sorted(writing_ops()[name].same)]


@pytest.mark.parametrize("label,name,args,written,other", IN_PLACE, ids=[f"{p[0]}-{p[3]}-is-{p[4]}" for p in IN_PLACE])
def test_documented_in_place_calls_give_the_out_of_place_result(label, name, args, written, other):
    fn = writing_ops()[name]

    def fresh():
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}

    want = fn(**fresh())
    want = want if isinstance(want, tuple) else (want,)
    call = fresh()
    if other not in call:  # another output (residual_backward's db may be da)
        call[other] = np.zeros(*written_arrays(name, args)[other])
    call[written] = call[other]
    got = fn(**call)
    got = got if isinstance(got, tuple) else (got,)
    index = [i for i, r in enumerate(want) if isinstance(r, np.ndarray)][list(fn.writes).index(written)]
    assert got[index] is call[other]
    np.testing.assert_array_equal(got[index], want[index])


def test_rope_output_laid_over_the_positions_is_refused_not_a_crash(rng):
    """An out view over positions (int64) was accepted: the kernel rewrote the positions it was reading and read
    the tables out of bounds."""
    cos, sin = ops.rope_tables(16, 8)
    positions, out = overlapping(rng.integers(0, 16, (2, 3)), (2, 3, 1, 8), np.float32, shift_bytes=0)
    with pytest.raises(ValueError, match="out overlaps positions"):
        ops.rope_forward(opcases.f32(rng, 2, 3, 1, 8), cos, sin, positions, out=out)


def test_an_output_over_a_quantized_weights_blocks_is_refused(rng):
    weight = ops.Quantized(opcases.random_blocks(rng, "Q8_0", 4, 64), "Q8_0", (4, 64))
    weight, out = overlapping(weight, (3, 4), np.float32, shift_bytes=8)
    with pytest.raises(ValueError, match="out overlaps weight"):
        ops.matmul_forward(opcases.f32(rng, 3, 64), weight, out=out)
    weight, out = overlapping(weight, (4, 64), np.float32, shift_bytes=0)
    with pytest.raises(ValueError, match="out overlaps weight"):
        ops.dequantize(weight, out=out)
