"""Threads: 1 and 2 OpenMP threads agree; two Python threads running kernels at once agree with one."""

from __future__ import annotations

import sys
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


def _outputs(case, seed):
    from pytransformer import opcases  # noqa: F401  (the registry's own ours())

    x = case.make(np.random.default_rng(seed))
    return case.spec.ours(x, case.o)


def test_every_op_case_is_bit_identical_for_any_thread_count(restore_threads):
    """Reductions never depend on the team size (it may change with the machine's load): every registry case,
    forward and backward, gives the same bits on 1 and 2 threads. So a resumed run continues bit-exactly at any
    thread count."""
    from pytransformer import opcases

    big = [c for c in opcases.cases("test") if c.op in ("layernorm", "crossentropy", "matmul", "attention",
                                                         "embedding", "softmax", "sum_squares", "adamw", "gelu")]
    big.append(opcases.case("layernorm", N=4096, C=512))
    big.append(opcases.case("crossentropy", N=2048, V=300))
    for case in big:
        pytransformer.set_num_threads(1)
        one = _outputs(case, 3)
        pytransformer.set_num_threads(2)
        two = _outputs(case, 3)
        for name in one:
            np.testing.assert_array_equal(np.asarray(one[name]), np.asarray(two[name]), err_msg=f"{case.label} {name}")


def test_a_busy_machine_caps_kernels_at_one_thread_and_a_quiet_one_lets_them_go(restore_threads):
    import os
    import subprocess
    import sys
    import time

    if (os.cpu_count() or 1) < 2 or pytransformer.get_num_threads() < 2 or not pytransformer.cpu_info()["openmp"]:
        pytest.skip("needs two threads")
    x = np.ones((256, 256), np.float32)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count())]
    try:
        capped, deadline = False, time.time() + 10
        while not capped and time.time() < deadline:
            ops.matmul_forward(x, x)
            capped = pytransformer.cpu_info()["capped_by_load"]
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert capped, "every core was busy, yet the kernels kept a team of two"
    deadline = time.time() + 30  # rechecked every second; one probe of a quiet moment lifts the cap
    lifted = False
    while not lifted and time.time() < deadline:
        ops.matmul_forward(x, x)
        lifted = not pytransformer.cpu_info()["capped_by_load"]
        time.sleep(0.05)
    assert lifted, "the machine is quiet again, yet kernels stay on one thread"


def test_split_key_attention_equals_one_thread(rng):
    """One query over a long cache with fewer heads than threads splits the keys across threads (split-K, merged
    by log-sum-exp): the same output as one thread within float32 rounding, masks and causality included."""
    from pytransformer import ops, reference

    q = rng.standard_normal((1, 1, 1, 64)).astype(np.float32)
    k, v = (rng.standard_normal((1, 1, 5000, 64)).astype(np.float32) for _ in range(2))
    mask = rng.random((1, 5000)) > 0.2
    mask[0, :3000] = False  # a whole chunk of hidden keys
    before = pytransformer.get_num_threads()
    try:
        results = []
        for n in (1, 4):
            pytransformer.set_num_threads(n)
            results.append(ops.attention_forward(q, k, v, True, mask))
    finally:
        pytransformer.set_num_threads(before)
    (o1, l1), (o4, l4) = results
    want, lse = reference.attention_forward(q, k, v, True, mask)
    for o, l in results:
        assert np.abs(o - want).max() < 2e-5 * np.abs(want).max() and np.abs(l - lse).max() < 2e-5 * np.abs(lse).max()
    np.testing.assert_array_equal(o4, o1)  # (where the keys split depends on the shape alone)
    np.testing.assert_array_equal(l4, l1)


@pytest.mark.parametrize("NH, NKV, HS, Tq, window", [(9, 3, 64, 1, 0), (4, 1, 256, 1, 0), (4, 1, 64, 3, 0),
                                                     (6, 2, 128, 1, 200), (16, 16, 16, 1, 0)])
def test_decoding_attention_splits_its_keys_the_same_bits_on_any_threads(rng, NH, NKV, HS, Tq, window):
    """Decoding (a few query rows, a few key/value heads -- or one -- over a few hundred cached keys) splits the keys
    into chunks that every query head of a group reads together, merged by log-sum-exp: the reference within float32
    rounding, and the same bits on 1, 2 and 3 threads (the chunks depend on the shape alone)."""
    from pytransformer import ops, reference

    Tk = 300
    q = rng.standard_normal((1, NH, Tq, HS)).astype(np.float32)
    k, v = (rng.standard_normal((1, NKV, Tk, HS)).astype(np.float32) for _ in range(2))
    mask = rng.random((1, Tk)) > 0.1
    before = pytransformer.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            pytransformer.set_num_threads(n)
            results.append(ops.attention_forward(q, k, v, True, mask, window=window))
    finally:
        pytransformer.set_num_threads(before)
    want, lse = reference.attention_forward(q, k, v, True, mask, window=window)
    o, l = results[0]
    # float32 sums of Tk terms, each score a sum of HS products: relative error a few Tk * 2^-24 at most
    assert np.abs(o - want).max() < 1e-4 * np.abs(want).max() and np.abs(l - lse).max() < 1e-5 * np.abs(lse).max()
    for o_n, l_n in results[1:]:
        np.testing.assert_array_equal(o_n, o)
        np.testing.assert_array_equal(l_n, l)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_load_probe_tells_this_processs_busy_threads_from_other_processes():
    """Another library's pool spinning in this process (OpenBLAS after a NumPy matmul) is not another process
    holding the cores: busy_threads() counts this process's running threads (but the caller) apart from other
    processes', which is what lets the probe cap kernels for the second only for a foreign load."""
    import hashlib
    import subprocess
    import time

    from pytransformer import _core

    data, stop = b"x" * (1 << 24), threading.Event()

    def spin():  # hashing releases the GIL: a thread of this process busy outside Python, like a BLAS pool's
        while not stop.is_set():
            hashlib.sha256(data)

    spinners = [threading.Thread(target=spin) for _ in range(2)]
    for t in spinners:
        t.start()
    try:
        time.sleep(0.1)
        own = max(_core.busy_threads()[0] for _ in range(5))
    finally:
        stop.set()
        for t in spinners:
            t.join()
    assert own >= 2
    others = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.3)
        counts = [_core.busy_threads() for _ in range(5)]
    finally:
        for p in others:
            p.kill()
            p.wait()
    assert min(own for own, _ in counts) == 0 and max(foreign for _, foreign in counts) >= 2
