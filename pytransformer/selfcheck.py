"""A short self-check of every kernel (forward and backward) against the float64 reference.

`pytransformer info` runs it for every ISA variant this machine supports. Each check returns the worst
relative error (max |kernel - reference| / max |reference|) over the outputs it compares.
"""

from __future__ import annotations

import numpy as np

from . import _runtime, ops
from . import reference as ref

TOLERANCE = 1e-4


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    same = a == b  # also where both are -inf (a row that sees no key has lse = -inf)
    if not (np.isfinite(a) | same).all():
        return float("inf")
    diff = np.where(same, 0.0, np.abs(a - b))
    scale = np.abs(np.where(np.isfinite(b), b, 0.0)).max()
    return float(diff.max() / max(scale, 1e-30))


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def check_matmul(rng):
    x, w, b, g = _f32(rng, 37, 70), _f32(rng, 45, 70), _f32(rng, 45), _f32(rng, 37, 45)
    return max([_rel(ops.matmul_forward(x, w, b), ref.matmul_forward(x, w, b))]
               + [_rel(a, e) for a, e in zip(ops.matmul_backward(g, x, w), ref.matmul_backward(g, x, w))])


def check_layernorm(rng):
    x, w, b, g = _f32(rng, 9, 70), _f32(rng, 70), _f32(rng, 70), _f32(rng, 9, 70)
    out, mean, rstd = ops.layernorm_forward(x, w, b)
    want = ref.layernorm_forward(x, w, b)
    return max([_rel(a, e) for a, e in zip((out, mean, rstd), want)]
               + [_rel(a, e) for a, e in zip(ops.layernorm_backward(g, x, w, mean, rstd),
                                             ref.layernorm_backward(g, x, w, want[1], want[2]))])


def _check_gelu(rng, approximate):
    x, g = _f32(rng, 333), _f32(rng, 333)
    return max(_rel(ops.gelu_forward(x, approximate), ref.gelu_forward(x, approximate)),
               _rel(ops.gelu_backward(g, x, approximate), ref.gelu_backward(g, x, approximate)))


def check_gelu_tanh(rng):
    return _check_gelu(rng, "tanh")


def check_gelu_erf(rng):
    return _check_gelu(rng, "none")


def check_relu(rng):
    x, g = _f32(rng, 333), _f32(rng, 333)
    return max(_rel(ops.relu_forward(x), ref.relu_forward(x)), _rel(ops.relu_backward(g, x), ref.relu_backward(g, x)))


def check_softmax(rng):
    x, g = _f32(rng, 9, 70), _f32(rng, 9, 70)
    y = ops.softmax_forward(x)
    return max(_rel(y, ref.softmax_forward(x)), _rel(ops.softmax_backward(g, y), ref.softmax_backward(g, ref.softmax_forward(x))))


def check_crossentropy(rng):
    x, t = _f32(rng, 9, 70), rng.integers(0, 70, 9)
    t[0] = -100
    loss, losses, lse = ops.crossentropy_forward(x, t)
    want = ref.crossentropy_forward(x, t)
    return max(_rel(loss, want[0]), _rel(losses, want[1]),
               _rel(ops.crossentropy_backward(x, t, lse), ref.crossentropy_backward(x, t, want[2])))


def check_embedding(rng):
    table, ids, g = _f32(rng, 7, 33), rng.integers(0, 7, 50), _f32(rng, 50, 33)
    return max(_rel(ops.embedding_forward(ids, table), ref.embedding_forward(ids, table)),
               _rel(ops.embedding_backward(g, ids, 7), ref.embedding_backward(g, ids, 7)))


def check_residual(rng):
    a, b = _f32(rng, 99), _f32(rng, 99)
    return max([_rel(ops.residual_forward(a, b), ref.residual_forward(a, b))]
               + [_rel(x, e) for x, e in zip(ops.residual_backward(a), ref.residual_backward(a))])


def check_dropout(rng):
    x = _f32(rng, 999)
    return max(_rel(ops.dropout_forward(x, 0.3, 42), ref.dropout_forward(x, 0.3, 42)),
               _rel(ops.dropout_backward(x, 0.3, 42), ref.dropout_backward(x, 0.3, 42)))


def check_attention(rng):
    q, k, v, g = _f32(rng, 2, 3, 19, 24), _f32(rng, 2, 3, 19, 24), _f32(rng, 2, 3, 19, 24), _f32(rng, 2, 3, 19, 24)
    mask = rng.random((2, 19)) > 0.2
    errs = []
    for causal in (False, True):
        out, lse = ops.attention_forward(q, k, v, causal, mask)
        want_out, want_lse = ref.attention_forward(q, k, v, causal, mask)
        errs += [_rel(out, want_out), _rel(lse, want_lse)]
        errs += [_rel(a, e) for a, e in zip(ops.attention_backward(g, q, k, v, out, lse, causal, mask),
                                            ref.attention_backward(g, q, k, v, want_out, want_lse, causal, mask))]
    return max(errs)


def check_adamw(rng):
    p, g = _f32(rng, 500), _f32(rng, 500)
    m, v = np.zeros(500, np.float32), np.zeros(500, np.float32)
    want = ref.adamw_step(p, m, v, g, 1e-2, 0.9, 0.99, 1e-8, 0.1, 1)
    ops.adamw_step(p, m, v, g, 1e-2, 0.9, 0.99, 1e-8, 0.1, 1)
    return max(_rel(a, e) for a, e in zip((p, m, v), want))


def check_sum_squares(rng):
    x = _f32(rng, 5000)
    return _rel(ops.sum_squares(x), ref.sum_squares(x))


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def run(isas=None, seed=0):
    """-> {isa: {kernel: relative error}} for each ISA (default: every one supported here)."""
    info = _runtime.cpu_info()
    before = info["isa"]
    results = {}
    try:
        for isa in isas or info["available_isas"]:
            _runtime.set_isa(isa)
            results[isa] = {name: fn(np.random.default_rng(seed)) for name, fn in CHECKS.items()}
    finally:
        _runtime.set_isa(before)
    return results
