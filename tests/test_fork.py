"""A child made by fork() after the kernels have run (multiprocessing's default start method on Linux) runs them
on one thread instead of waiting forever for the parent's OpenMP threads, and gets the parent's results."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys

import numpy as np
import pytest

import pytransformer
from pytransformer import ops

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork()")


def work(seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((256, 512), dtype=np.float32), rng.standard_normal((384, 512), dtype=np.float32)
    q = rng.standard_normal((2, 4, 96, 32), dtype=np.float32)
    out, _ = ops.attention_forward(q, q, q, True)
    y, _, _ = ops.layernorm_forward(ops.matmul_forward(x, w), np.ones(384, np.float32), np.zeros(384, np.float32))
    return y, out, pytransformer.cpu_info()


def test_forked_pool_workers_run_kernels_after_the_parent_did():
    want = [work(i) for i in range(3)]  # the parent's OpenMP pool is up now
    assert not want[0][2]["forked_child"]
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map_async(work, range(3)).get(timeout=60)  # hung forever before the at-fork handler
    for (wy, wo, _), (gy, go, info) in zip(want, got):
        assert info["forked_child"] and info["num_threads"] == 1
        np.testing.assert_allclose(gy, wy, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(go, wo, rtol=1e-5, atol=1e-6)


def test_the_parent_keeps_its_threads_after_forking():
    before = pytransformer.get_num_threads()
    ctx = mp.get_context("fork")
    p = ctx.Process(target=work, args=(0,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert pytransformer.get_num_threads() == before
    assert not pytransformer.cpu_info()["forked_child"]
