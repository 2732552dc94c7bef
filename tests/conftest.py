"""Shared fixtures: a seeded rng, every ISA variant this machine runs, torch when installed, a closeness check
(rel_err is the op-case registry's, the one comparison the tests, the self-check and the bench share)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zlib

import numpy as np
import pytest

import pytransformer
from pytransformer.opcases import rel_err

ISAS = pytransformer.cpu_info()["available_isas"]
SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def rng(request):
    # a different but fixed stream per test
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def switched(request, get, put):
    """A parametrised fixture's body: put(request.param) for the test, then put back what get() said before."""
    before = get()
    put(request.param)
    yield request.param
    put(before)


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test once per ISA variant supported here, restoring the default afterwards."""
    yield from switched(request, lambda: pytransformer.cpu_info()["isa"], pytransformer.set_isa)


PRECISIONS = ["float32"] + (["bfloat16"] if pytransformer.cpu_info()["amx_bf16"] else [])


@pytest.fixture(params=PRECISIONS)
def precision(request):
    """Runs the test once per matmul precision this machine has (bfloat16 on AMX), restoring the default afterwards."""
    yield from switched(request, lambda: pytransformer.cpu_info()["matmul_precision"],
                        pytransformer.set_matmul_precision)


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def assert_close(actual, expected, tol, what="", floor=0.0):
    err = rel_err(actual, expected, floor)
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def central_difference(loss, x, indices, h):
    """d loss() / d x.flat[i] for each i by central differences (x is modified in place and restored)."""
    flat = x.reshape(-1)
    out = []
    for i in indices:
        old = flat[i]
        flat[i] = old + h
        up = loss()
        flat[i] = old - h
        down = loss()
        flat[i] = old
        out.append((up - down) / (2 * h))
    return np.array(out)


def greedy_by_recomputation(model, ids, n):
    """ids (B, T) and n greedy tokens, each from the whole sequence recomputed without a cache: what generate()
    over its KV cache must equal."""
    seq = ids
    for _ in range(n):
        with model.evaluating():
            nxt = model(seq)[:, -1].argmax(-1)
        seq = np.concatenate([seq, nxt[:, None]], 1)
    return seq


def logits_as_generated(model, ids):
    """ids (T,) -> the last position's logits (V,), float64, as generate() and the server compute them: the C++
    decoding plan, whose rows are the same bits alone or in a batch. (model.forward runs the layers, whose float
    sums are ordered otherwise: float32 rounding apart, which int8 activations -- the GGUF default on AVX512-VNNI
    CPUs -- round up to a step of their grid in the next product: ~0.5 logits on SmolLM2.)"""
    ids = np.asarray(ids, np.int64)
    k, v = model.new_slots(1, len(ids))
    return model.decode_batch(ids, np.zeros(len(ids), np.int64), np.arange(len(ids)), k, v)[-1].astype(np.float64)


def passes_in_a_child(script, cwd, **env):
    """Runs a Python script in a fresh process with these environment variables set (a kernel choice read once at
    import: PYTRANSFORMER_INT8_DOT, PYTRANSFORMER_POPCOUNT), from cwd (outside the checkout: the package under
    test, not its sources); asserts that it exits 0 and prints ok."""
    run = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, **env), capture_output=True, text=True,
                         timeout=600, cwd=cwd)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]
