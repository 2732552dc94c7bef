"""pt.semantic_search against a float64 brute force, and the sign bits an index scans against their definition."""

from __future__ import annotations

import numpy as np
import pytest

import pytransformer
from pytransformer import ops, search
from pytransformer.search import pack_signs, semantic_search
from conftest import passes_in_a_child


def brute_force(q, c, score):
    q, c = q.astype(np.float64), c.astype(np.float64)
    if score == "cosine":
        q, c = q / np.linalg.norm(q, axis=1, keepdims=True), c / np.linalg.norm(c, axis=1, keepdims=True)
    return q @ c.T


@pytest.mark.parametrize("score", ["cosine", "dot"])
def test_semantic_search_is_the_exact_top_k(rng, monkeypatch, score):
    monkeypatch.setattr(search, "CHUNK", 64)  # several chunks: the running top-k must merge them
    q = rng.standard_normal((5, 37)).astype(np.float32)
    c = rng.standard_normal((300, 37)).astype(np.float32)
    scores, ids = semantic_search(q, c, 7, score)
    want = brute_force(q, c, score)
    assert ids.shape == scores.shape == (5, 7) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, np.argsort(-want, 1, kind="stable")[:, :7])
    # float32 products of 37 terms: error ~ sqrt(37) * eps * |q| |c|
    bound = 8 * np.sqrt(37) * np.finfo(np.float32).eps * np.abs(want).max()
    assert np.abs(scores - np.take_along_axis(want, ids, 1)).max() < bound


def test_one_query_gives_one_row_and_top_k_is_clamped_to_the_corpus(rng):
    c = rng.standard_normal((4, 8)).astype(np.float32)
    scores, ids = semantic_search(c[2], c, 100)
    assert scores.shape == ids.shape == (4,)
    assert ids[0] == 2 and scores[0] == pytest.approx(1.0, abs=1e-6)
    assert sorted(ids) == [0, 1, 2, 3] and (np.diff(scores) <= 0).all()


def test_ties_keep_the_lower_id_first():
    c = np.ones((6, 3), np.float32)
    assert semantic_search(np.ones(3, np.float32), c, 4)[1].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("query, corpus, top_k, match", [
    (np.ones(4), np.zeros((0, 4)), 1, "corpus_emb must be a non-empty"),
    (np.ones(5), np.ones((3, 4)), 1, r"query_emb must be .*\(4,\) or \(N, 4\), got float64 \(5,\)"),
    (np.ones((2, 2, 4)), np.ones((3, 4)), 1, "query_emb must be"),
    (np.ones(4), np.ones((3, 4)), 0, "top_k must be an integer >= 1, got 0"),
    (np.ones(4), np.ones((3, 4)), 2.5, "top_k must be an integer"),
    (np.ones(4), np.ones((3, 4)), True, "top_k must be an integer"),
    (np.full(4, np.nan), np.ones((3, 4)), 1, "query_emb holds NaN"),
    (np.ones(4), np.array([["a"] * 4]), 1, "corpus_emb must be a non-empty array of numbers"),
])
def test_bad_input_is_one_line(query, corpus, top_k, match):
    with pytest.raises(ValueError, match=match) as e:
        semantic_search(query, corpus, top_k)
    assert "\n" not in str(e.value)


def test_unknown_score_is_refused():
    with pytest.raises(ValueError, match="score must be one of"):
        semantic_search(np.ones(3), np.ones((2, 3)), 1, score="l2")


def test_sign_bits_are_packed_word_by_word(rng):
    x = rng.standard_normal((9, 70)).astype(np.float32)
    signs = pack_signs(x)
    assert signs.shape == (2, 9) and signs.dtype == np.uint64
    for n in range(9):
        for d in range(70):
            assert (int(signs[d // 64, n]) >> (d % 64)) & 1 == (x[n, d] > 0)
        assert int(signs[1, n]) >> 6 == 0  # the padding bits are zero


@pytest.mark.parametrize("threads", [1, 2])
def test_hamming_candidates_are_every_row_within_the_nth_distance(isa, rng, threads):
    x = rng.standard_normal((70001, 100)).astype(np.float32)  # (several chunks of 16,384 rows: threaded)
    q = rng.standard_normal((3, 100)).astype(np.float32)
    dist = ((x[None] > 0) != (q[:, None] > 0)).sum(2)
    before = pytransformer.get_num_threads()
    pytransformer.set_num_threads(threads)
    try:
        got = ops.hamming_candidates_forward(pack_signs(x), np.ascontiguousarray(pack_signs(q).T), 30)
    finally:
        pytransformer.set_num_threads(before)
    for g, d in zip(got, dist):
        np.testing.assert_array_equal(g, np.flatnonzero(d <= np.sort(d)[29]))  # ascending ids, ties included


def test_hamming_candidates_of_one_query_and_crowded_ties(rng):
    signs = np.ascontiguousarray(np.repeat(rng.integers(0, 2**64, (2, 3), np.uint64), 1000, axis=1))  # 3 x 1000 equal
    got = ops.hamming_candidates_forward(signs, signs[:, 0].copy(), 5)
    np.testing.assert_array_equal(got, np.arange(1000))  # (more than the first call's room: asked again)


@pytest.mark.parametrize("signs, queries, n, err, match", [
    (np.zeros((1, 5), np.int64), np.zeros(1, np.uint64), 1, TypeError, "signs must be uint64"),
    (np.zeros((2, 5), np.uint64), np.zeros(3, np.uint64), 1, ValueError,
     r"queries must be uint64 \(W\) with W=2, got uint64 \(3,\)"),
    (np.zeros((2, 5), np.uint64), np.zeros((2, 2), np.uint64), 0, ValueError, "n must be >= 1"),
    (np.zeros((2, 5), np.uint64)[:, ::2], np.zeros(2, np.uint64), 1, ValueError, "C-contiguous"),
    (np.zeros((1025, 1), np.uint64), np.zeros(1025, np.uint64), 1, ValueError, "at most 1024 words"),
])
def test_hamming_candidates_refuse_bad_input_in_one_line(signs, queries, n, err, match):
    with pytest.raises(err, match=match) as e:
        ops.hamming_candidates_forward(signs, queries, n)
    assert "\n" not in str(e.value)


def test_the_binding_refuses_overlapping_outputs_and_wrong_sizes():
    from pytransformer import _core

    signs, q = np.zeros((1, 8), np.uint64), np.zeros((1, 1), np.uint64)
    ids, counts = np.zeros((1, 8), np.int64), np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="counts overlaps ids"):
        _core.hamming_candidates_forward(ids, ids[0, :1], signs, q, 8, 1, 1, 1, 8)
    with pytest.raises(ValueError, match="signs must have 16 elements"):
        _core.hamming_candidates_forward(ids, counts, signs, q, 16, 1, 1, 1, 8)
    with pytest.raises(ValueError, match="overflow int64"):
        _core.hamming_candidates_forward(ids, counts, signs, q, 8, 1, 2**62, 1, 8)


@pytest.mark.parametrize("codes, scale, queries, n, err, match", [
    (np.zeros((3, 4), np.uint8), np.ones(3, np.float32), np.zeros(4, np.int8), 1, TypeError, "codes must be int8"),
    (np.zeros((3, 4), np.int8), np.ones(2, np.float32), np.zeros(4, np.int8), 1, ValueError,
     r"scale must be float32 \(N\) with N=3"),
    (np.zeros((3, 4), np.int8), np.ones(3, np.float32), np.zeros((2, 5), np.int8), 1, ValueError,
     r"queries must be int8 \(Q, D\) with Q=2, D=4"),
    (np.zeros((3, 4), np.int8), np.ones(3, np.float32), np.zeros(4, np.int8), 0, ValueError, "n must be >= 1"),
])
def test_int8_candidates_refuse_bad_input_in_one_line(codes, scale, queries, n, err, match):
    with pytest.raises(err, match=match) as e:
        ops.int8_candidates_forward(codes, scale, queries, n)
    assert "\n" not in str(e.value)


def test_int8_candidates_take_every_row_when_n_passes_them(rng):
    codes = rng.integers(-127, 128, (5, 8)).astype(np.int8)
    got = ops.int8_candidates_forward(codes, np.ones(5, np.float32), codes[:2].copy(), 50)
    np.testing.assert_array_equal(got, [np.arange(5), np.arange(5)])


def test_the_int8_binding_refuses_n_past_the_rows_and_overlaps():
    from pytransformer import _core

    codes, scale, q = np.zeros((4, 8), np.int8), np.ones(4, np.float32), np.zeros((1, 8), np.int8)
    with pytest.raises(ValueError, match="at most the rows"):
        _core.int8_candidates_forward(np.zeros((1, 5), np.int64), codes, scale, q, 4, 8, 1, 5)
    ids = np.zeros((1, 4), np.int64)
    with pytest.raises(ValueError, match="ids overlaps codes"):
        _core.int8_candidates_forward(ids, ids.view(np.int8).reshape(4, 8), scale, q, 4, 8, 1, 4)


def test_the_nibble_popcount_runs_where_vpopcntq_is_forced_off(tmp_path):
    """PYTRANSFORMER_POPCOUNT=vpshufb keeps the nibble-table bit count on a CPU with VPOPCNTDQ: its cases pass too."""
    if ops.popcount() != "vpopcntq":
        pytest.skip("no vpopcntq here: the default run already tests the other form")
    script = ("import numpy as np, pytransformer as pt\n"
              "from pytransformer import opcases\n"
              "assert pt.cpu_info()['popcount'] == 'vpshufb'\n"
              "rng = np.random.default_rng(0)\n"
              "for c in opcases.cases('test'):\n"
              "    if c.op == 'hamming_candidates':\n"
              "        for name, (err, tol) in c.errors(c.make(rng)).items():\n"
              "            assert err <= tol, (c.label, name, err)\n"
              "print('ok')\n")
    passes_in_a_child(script, tmp_path, PYTRANSFORMER_POPCOUNT="vpshufb")
