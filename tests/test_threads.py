"""Threads: 1 and 2 OpenMP threads agree; two Python threads running kernels at once agree with one."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import f32

import pytransformer
from pytransformer import ops


@pytest.fixture
def restore_threads():
    before = pytransformer.get_num_threads()
    yield
    pytransformer.set_num_threads(before)


def run_all(rng_seed):
    rng = np.random.default_rng(rng_seed)
    x, w, g = f32(rng, 300, 200), f32(rng, 150, 200), f32(rng, 300, 150)
    q, k, v = f32(rng, 2, 3, 70, 24), f32(rng, 2, 3, 70, 24), f32(rng, 2, 3, 70, 24)
    ids = rng.integers(0, 20, 5000)
    out, lse = ops.attention_forward(q, k, v, True)
    res = [ops.matmul_forward(x, w), *ops.matmul_backward(g, x, w), out,
           *ops.attention_backward(q, q, k, v, out, lse, True),
           *ops.layernorm_forward(x, x[0], x[1]), ops.softmax_forward(x), ops.gelu_forward(x),
           ops.embedding_backward(f32(rng, 5000, 64), ids, 20), np.array(ops.sum_squares(x))]
    return res


def test_one_and_two_threads_agree(restore_threads):
    pytransformer.set_num_threads(1)
    assert pytransformer.get_num_threads() == 1
    one = run_all(7)
    pytransformer.set_num_threads(2)
    two = run_all(7)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_embedding_backward_is_deterministic_across_thread_counts(restore_threads, rng):
    g, ids = f32(rng, 20000, 96), rng.integers(0, 3, 20000)
    pytransformer.set_num_threads(1)
    a = ops.embedding_backward(g, ids, 3)
    pytransformer.set_num_threads(2)
    np.testing.assert_array_equal(a, ops.embedding_backward(g, ids, 3))


def test_two_python_threads_at_once_agree_with_one():
    want = run_all(11)
    results = [None, None]

    def work(i):
        for _ in range(3):
            results[i] = run_all(11)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for res in results:
        for a, b in zip(res, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_threadpoolctl_sees_and_limits_the_openmp_threads(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not pytransformer.cpu_info()["openmp"]:
        pytest.skip("built without OpenMP")
    infos = threadpoolctl.threadpool_info()
    assert any(i["user_api"] == "openmp" for i in infos), infos
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert pytransformer.get_num_threads() == 1


def test_set_num_threads_rejects_nonsense():
    with pytest.raises(ValueError):
        pytransformer.set_num_threads(0)
    with pytest.raises(TypeError):
        pytransformer.set_num_threads(1.5)
