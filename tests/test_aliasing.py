"""Outputs never silently overlap inputs: every output of every op is checked against every array argument
(and the other outputs) by memory bounds, whatever the dtypes; only the documented in-place calls (the very same
array) are accepted, and they give the out-of-place result."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer import ops


def f(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def op_table(rng):
    """op name -> (call(**arrays, **outputs), {input name: array}, {output kwarg: (shape, dtype)}, in-place pairs)."""
    N, IC, OC, C, V = 5, 6, 7, 8, 9
    B, NH, T, HS = 2, 2, 3, 4
    x, w, b, g = f(rng, N, IC), f(rng, OC, IC), f(rng, OC), f(rng, N, OC)
    y = f(rng, N, C)
    ln_w, ln_b = f(rng, C), f(rng, C)
    _, mean, rstd = ops.layernorm_forward(y, ln_w, ln_b)
    logits, targets = f(rng, N, V), rng.integers(0, V, N)
    _, _, lse = ops.crossentropy_forward(logits, targets)
    q, k, v, dq = f(rng, B, NH, T, HS), f(rng, B, NH, T, HS), f(rng, B, NH, T, HS), f(rng, B, NH, T, HS)
    mask = np.ones((B, T), bool)
    aout, alse = ops.attention_forward(q, k, v, True, mask)
    sm = ops.softmax_forward(y)
    F32 = np.float32
    return {
        "matmul_forward": (lambda inp, weight, bias, **o: ops.matmul_forward(inp, weight, bias, **o),
                           dict(inp=x, weight=w, bias=b), {"out": ((N, OC), F32)}, ()),
        "matmul_backward": (lambda dout, inp, weight, **o: ops.matmul_backward(dout, inp, weight, **o),
                            dict(dout=g, inp=x, weight=w),
                            {"dinp": ((N, IC), F32), "dweight": ((OC, IC), F32), "dbias": ((OC,), F32)}, ()),
        "layernorm_forward": (lambda inp, weight, bias, **o: ops.layernorm_forward(inp, weight, bias, **o),
                              dict(inp=y, weight=ln_w, bias=ln_b),
                              {"out": ((N, C), F32), "mean": ((N,), F32), "rstd": ((N,), F32)}, (("out", "inp"),)),
        "layernorm_backward": (lambda dout, inp, weight, mean, rstd, **o: ops.layernorm_backward(
            dout, inp, weight, mean, rstd, **o), dict(dout=f(rng, N, C), inp=y, weight=ln_w, mean=mean, rstd=rstd),
            {"dinp": ((N, C), F32), "dweight": ((C,), F32), "dbias": ((C,), F32)}, (("dinp", "dout"),)),
        "gelu_forward": (lambda inp, **o: ops.gelu_forward(inp, **o), dict(inp=y), {"out": ((N, C), F32)},
                         (("out", "inp"),)),
        "gelu_backward": (lambda dout, inp, **o: ops.gelu_backward(dout, inp, **o), dict(dout=f(rng, N, C), inp=y),
                          {"dinp": ((N, C), F32)}, (("dinp", "dout"), ("dinp", "inp"))),
        "relu_forward": (lambda inp, **o: ops.relu_forward(inp, **o), dict(inp=y), {"out": ((N, C), F32)},
                         (("out", "inp"),)),
        "relu_backward": (lambda dout, inp, **o: ops.relu_backward(dout, inp, **o), dict(dout=f(rng, N, C), inp=y),
                          {"dinp": ((N, C), F32)}, (("dinp", "dout"), ("dinp", "inp"))),
        "softmax_forward": (lambda inp, **o: ops.softmax_forward(inp, **o), dict(inp=y), {"out": ((N, C), F32)},
                            (("out", "inp"),)),
        "softmax_backward": (lambda dout, out, **o: ops.softmax_backward(dout, out, **o),
                             dict(dout=f(rng, N, C), out=sm), {"dinp": ((N, C), F32)}, (("dinp", "dout"),)),
        "crossentropy_forward": (lambda logits, targets, **o: ops.crossentropy_forward(logits, targets, **o),
                                 dict(logits=logits, targets=targets), {"losses": ((N,), F32), "lse": ((N,), F32)},
                                 ()),
        "crossentropy_backward": (lambda logits, targets, lse, **o: ops.crossentropy_backward(
            logits, targets, lse, **o), dict(logits=logits, targets=targets, lse=lse), {"dlogits": ((N, V), F32)},
            (("dlogits", "logits"),)),
        "embedding_forward": (lambda ids, table, **o: ops.embedding_forward(ids, table, **o),
                              dict(ids=targets, table=f(rng, V, C)), {"out": ((N, C), F32)}, ()),
        "embedding_backward": (lambda dout, ids, **o: ops.embedding_backward(dout, ids, V, **o),
                               dict(dout=y, ids=targets), {"dtable": ((V, C), F32)}, ()),
        "residual_forward": (lambda a, b, **o: ops.residual_forward(a, b, **o), dict(a=y, b=f(rng, N, C)),
                             {"out": ((N, C), F32)}, (("out", "a"), ("out", "b"))),
        "residual_backward": (lambda dout, **o: ops.residual_backward(dout, **o), dict(dout=y),
                              {"da": ((N, C), F32), "db": ((N, C), F32)}, (("da", "dout"), ("db", "dout"))),
        "dropout_forward": (lambda inp, **o: ops.dropout_forward(inp, 0.3, 7, **o), dict(inp=y),
                            {"out": ((N, C), F32)}, (("out", "inp"),)),
        "dropout_backward": (lambda dout, **o: ops.dropout_backward(dout, 0.3, 7, **o), dict(dout=y),
                             {"dinp": ((N, C), F32)}, (("dinp", "dout"),)),
        "attention_forward": (lambda q, k, v, key_mask, **o: ops.attention_forward(q, k, v, True, key_mask, **o),
                              dict(q=q, k=k, v=v, key_mask=mask),
                              {"out": ((B, NH, T, HS), F32), "lse": ((B, NH, T), F32)}, ()),
        "attention_backward": (lambda dout, q, k, v, out, lse, key_mask, **o: ops.attention_backward(
            dout, q, k, v, out, lse, True, key_mask, **o),
            dict(dout=dq, q=q, k=k, v=v, out=aout, lse=alse, key_mask=mask),
            {"dq": ((B, NH, T, HS), F32), "dk": ((B, NH, T, HS), F32), "dv": ((B, NH, T, HS), F32)}, ()),
    }


CASES = [(op, out, other) for op, (_, inputs, outputs, _) in op_table(np.random.default_rng(0)).items()
         for out in outputs for other in list(inputs) + [o for o in outputs if o != out]]


def overlapping(value, shape, dtype, shift_bytes=4):
    """(a copy of value, an array of shape/dtype) laid over one buffer, the second starting shift_bytes into the
    first: a partial overlap whatever the two dtypes."""
    value = np.asarray(value)
    raw = np.zeros(value.nbytes + int(np.prod(shape)) * np.dtype(dtype).itemsize + 64, np.uint8)
    first = raw[: value.nbytes].view(value.dtype).reshape(value.shape)
    first[...] = value
    second = raw[shift_bytes: shift_bytes + int(np.prod(shape)) * np.dtype(dtype).itemsize].view(dtype).reshape(shape)
    return first, second


@pytest.mark.parametrize("op,out_name,other", CASES, ids=[f"{o}-{a}-over-{b}" for o, a, b in CASES])
def test_an_output_overlapping_any_other_argument_is_refused(rng, op, out_name, other):
    call, inputs, outputs, _ = op_table(rng)[op]
    shape, dtype = outputs[out_name]
    args = dict(inputs)
    outs = {}
    if other in inputs:
        args[other], outs[out_name] = overlapping(inputs[other], shape, dtype)
    else:  # two outputs over each other
        other_shape, other_dtype = outputs[other]
        outs[other], outs[out_name] = overlapping(np.zeros(other_shape, other_dtype), shape, dtype)
    with pytest.raises(ValueError, match="overlaps"):
        call(**args, **outs)


def test_integer_inputs_seen_through_a_float_view_are_refused(rng):
    """The SIGSEGV class: an output laid over ids or targets (through another dtype's view), exactly at their
    start."""
    ids, out = overlapping(rng.integers(0, 9, 8), (8, 4), np.float32, shift_bytes=0)
    with pytest.raises(ValueError, match="overlaps ids"):
        ops.embedding_forward(ids, f(rng, 9, 4), out=out)
    targets, lse = overlapping(rng.integers(0, 5, 4), (4,), np.float32, shift_bytes=0)
    with pytest.raises(ValueError, match="overlaps targets"):
        ops.crossentropy_forward(f(rng, 4, 5), targets, lse=lse)


@pytest.mark.parametrize("op", [op for op, spec in op_table(np.random.default_rng(0)).items() if spec[3]])
def test_documented_in_place_calls_give_the_out_of_place_result(rng, op):
    call, inputs, outputs, pairs = op_table(rng)[op]
    want = call(**{k: v.copy() for k, v in inputs.items()})
    want = want if isinstance(want, tuple) else (want,)
    for out_name, in_name in pairs:
        args = {k: v.copy() for k, v in inputs.items()}
        got = call(**args, **{out_name: args[in_name]})
        got = got if isinstance(got, tuple) else (got,)
        index = list(outputs).index(out_name)
        assert got[index] is args[in_name]
        np.testing.assert_array_equal(got[index], want[index])


def test_adamw_state_buffers_may_not_overlap(rng):
    p, grads = f(rng, 64), f(rng, 64)
    p2, m = overlapping(p, (64,), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        ops.adamw_step(p2, m, np.zeros(64, np.float32), grads, 1e-3)
    with pytest.raises(ValueError, match="overlaps"):
        ops.adamw_step(p, np.zeros(64, np.float32), np.zeros(64, np.float32), p, 1e-3)
