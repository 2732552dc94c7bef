"""Property tests over every op's argument space: random shapes (empty and single sizes included), dtypes,
layouts (transposed, strided), outputs (absent, fresh, mis-shaped, read-only, overlapping an argument through any
dtype, the very same array). Every call either raises TypeError/ValueError or returns the float64 reference's
result; none crashes, hangs or writes anywhere it was not told to."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer import ops
from pytransformer import reference as ref
from pytransformer.opcases import rel_err

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
SETTINGS = hypothesis.settings(max_examples=120, deadline=None, derandomize=True,
                               suppress_health_check=list(hypothesis.HealthCheck))

sizes = st.integers(0, 9)
positive = st.integers(1, 9)


_BACKING = {}  # id(array) -> the larger buffer it lies at the start of, so that outputs can be laid over it


def backed(x):
    """x copied to the start of a buffer with room after it (any dtype)."""
    buf = np.zeros(x.nbytes + 16384, np.uint8)
    y = buf[:x.nbytes].view(x.dtype).reshape(x.shape)
    y[...] = x
    _BACKING[id(y)] = (buf, y)
    return y


@st.composite
def arrays(draw, shape, dtype=np.float32):
    """A float32 array of `shape`, or (rarely) one that is wrong in dtype, layout or shape."""
    kind = draw(st.sampled_from(["ok"] * 8 + ["f64", "int", "transposed", "strided", "shape"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal(shape).astype(dtype)
    if kind == "ok":
        return backed(x)
    if kind == "f64":
        return x.astype(np.float64)
    if kind == "int":
        return x.astype(np.int64)
    if kind == "transposed" and x.ndim >= 2:
        return np.asfortranarray(x)
    if kind == "strided" and x.ndim >= 1:
        return np.repeat(x, 2, axis=-1)[..., ::2]
    if kind == "shape":
        return rng.standard_normal(tuple(s + 1 for s in shape)).astype(dtype)
    return x


def valid(*xs):
    return all(isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous for x in xs)


@st.composite
def output_for(draw, shape, inputs):
    """None, a fresh output, or a bad one: mis-shaped, read-only, or overlapping one of `inputs` (any dtype)."""
    kind = draw(st.sampled_from(["none", "none", "fresh", "fresh", "shape", "readonly", "overlap", "same"]))
    if kind == "none":
        return None, "none"
    if kind == "fresh":
        return np.full(shape, np.nan, np.float32), "fresh"
    if kind == "shape":
        return np.zeros(tuple(s + 1 for s in shape) or (1,), np.float32), "bad"
    if kind == "readonly":
        out = np.zeros(shape, np.float32)
        out.flags.writeable = False
        return out, "bad"
    arrays_in = [x for x in inputs if isinstance(x, np.ndarray) and x.nbytes]
    if not arrays_in or not int(np.prod(shape)):
        return None, "none"
    victim = draw(st.sampled_from(arrays_in))
    if kind == "same":
        return victim, "same"
    buf, owner = _BACKING.get(id(victim), (None, None))
    need = int(np.prod(shape)) * 4
    if owner is not victim or victim.nbytes < 8:
        return None, "none"
    shift = draw(st.integers(1, victim.nbytes - 1)) // 4 * 4 or 4  # starts inside the victim, past its start
    if shift + need > buf.nbytes:
        return None, "none"
    return buf[shift: shift + need].view(np.float32).reshape(shape), "overlap"


def check(call, want, out_kind, out=None):
    """call() must raise TypeError/ValueError (when something was wrong), or match want() (float64)."""
    try:
        got = call()
    except (TypeError, ValueError):
        return "refused"
    assert out_kind in ("none", "fresh", "same"), f"a bad output ({out_kind}) was accepted"
    got, expected = (got if isinstance(got, tuple) else (got,)), want()
    expected = expected if isinstance(expected, tuple) else (expected,)
    for g, e in zip(got, expected):
        assert rel_err(g, e, floor=1.0) <= 1e-4
    if out is not None and out_kind == "fresh":
        assert got[0] is out  # written in place, never a silent copy
    return "ran"


@SETTINGS
@hypothesis.given(st.data(), sizes, sizes, sizes)
def test_matmul_forward(data, N, IC, OC):
    inp, weight = data.draw(arrays((N, IC))), data.draw(arrays((OC, IC)))
    bias = data.draw(st.one_of(st.none(), arrays((OC,))))
    out, kind = data.draw(output_for((N, OC), [inp, weight, bias]))
    ok = valid(inp, weight) and (bias is None or valid(bias)) and inp.shape[1:] == (weight.shape[1],) and \
        (bias is None or bias.shape == weight.shape[:1])
    if kind == "same":
        kind = "bad"  # matmul takes no in-place output
    result = check(lambda: ops.matmul_forward(inp, weight, bias, out=out),
                   lambda: ref.matmul_forward(inp, weight, bias), kind if ok else "bad", out)
    assert result == "refused" or ok


@SETTINGS
@hypothesis.given(st.data(), sizes, sizes, sizes)
def test_matmul_backward(data, N, IC, OC):
    dout, inp, weight = data.draw(arrays((N, OC))), data.draw(arrays((N, IC))), data.draw(arrays((OC, IC)))
    dinp, kind = data.draw(output_for((N, IC), [dout, inp, weight]))
    ok = valid(dout, inp, weight) and dout.shape == (N, OC) and inp.shape == (N, IC) and weight.shape == (OC, IC)
    kind = "bad" if kind == "same" else kind
    result = check(lambda: ops.matmul_backward(dout, inp, weight, dinp=dinp),
                   lambda: ref.matmul_backward(dout, inp, weight), kind if ok else "bad", dinp)
    assert result == "refused" or ok


@SETTINGS
@hypothesis.given(st.data(), sizes, positive, st.sampled_from(["gelu", "relu", "softmax", "dropout"]))
def test_elementwise_and_row_ops(data, N, C, op):
    x = data.draw(arrays((N, C)))
    out, kind = data.draw(output_for((N, C), [x]))
    calls = {"gelu": (lambda: ops.gelu_forward(x, "tanh", out=out), lambda: ref.gelu_forward(x, "tanh")),
             "relu": (lambda: ops.relu_forward(x, out=out), lambda: ref.relu_forward(x)),
             "softmax": (lambda: ops.softmax_forward(x, out=out), lambda: ref.softmax_forward(x)),
             "dropout": (lambda: ops.dropout_forward(x, 0.25, 3, out=out), lambda: ref.dropout_forward(x, 0.25, 3))}
    call, want = calls[op]
    if kind == "same":
        want_value = want() if valid(x) else None  # in place: the reference from the input before it is overwritten
        result = check(call, lambda: want_value, "same" if valid(x) else "bad", out)
    else:
        result = check(call, want, kind if valid(x) else "bad", out)
    assert result == "refused" or valid(x)


@SETTINGS
@hypothesis.given(st.data(), sizes, positive)
def test_layernorm_and_its_statistics(data, N, C):
    x, w, b = data.draw(arrays((N, C))), data.draw(arrays((C,))), data.draw(arrays((C,)))
    mean, kind = data.draw(output_for((N,), [x, w, b]))
    ok = valid(x, w, b) and x.shape == (N, C) and w.shape == b.shape == (C,)
    kind = "bad" if kind == "same" else kind
    result = check(lambda: ops.layernorm_forward(x, w, b, 1e-5, mean=mean)[1],
                   lambda: ref.layernorm_forward(x, w, b, 1e-5)[1], kind if ok else "bad", mean)
    assert result == "refused" or ok


@SETTINGS
@hypothesis.given(st.data(), sizes, positive, positive)
def test_embedding_and_crossentropy_with_integer_arguments(data, N, V, C):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    ids = backed(rng.integers(-1 if data.draw(st.booleans()) else 0, V, N))
    table = data.draw(arrays((V, C)))
    out, kind = data.draw(output_for((N, C), [ids, table]))
    ok = valid(table) and table.shape == (V, C) and (ids >= 0).all()
    kind = "bad" if kind == "same" else kind
    result = check(lambda: ops.embedding_forward(ids, table, out=out), lambda: ref.embedding_forward(ids, table),
                   kind if ok else "bad", out)
    assert result == "refused" or ok
    logits = data.draw(arrays((N, V)))
    lse, kind = data.draw(output_for((N,), [logits, ids]))
    ok = valid(logits) and logits.shape == (N, V) and ((ids >= 0) | (ids == -100)).all()
    kind = "bad" if kind == "same" else kind
    result = check(lambda: ops.crossentropy_forward(logits, ids, lse=lse)[2],
                   lambda: ref.crossentropy_forward(logits, ids)[2], kind if ok else "bad", lse)
    assert result == "refused" or ok


@SETTINGS
@hypothesis.given(st.data(), st.integers(0, 2), st.integers(0, 2), st.integers(0, 5), st.integers(0, 5),
                  st.integers(0, 6), st.booleans())
def test_attention(data, B, NH, Tq, Tk, HS, causal):
    q, k, v = data.draw(arrays((B, NH, Tq, HS))), data.draw(arrays((B, NH, Tk, HS))), data.draw(arrays((B, NH, Tk, HS)))
    mask = data.draw(st.one_of(st.none(), st.just(backed(np.random.default_rng(Tk).random((B, Tk)) > 0.3))))
    out, kind = data.draw(output_for((B, NH, Tq, HS), [q, k, v, mask]))
    ok = valid(q, k, v) and q.shape == (B, NH, Tq, HS) and k.shape == v.shape == (B, NH, Tk, HS) and HS > 0
    kind = "bad" if kind == "same" else kind
    result = check(lambda: ops.attention_forward(q, k, v, causal, mask, out=out)[0],
                   lambda: ref.attention_forward(q, k, v, causal, mask)[0], kind if ok else "bad", out)
    assert result == "refused" or ok
