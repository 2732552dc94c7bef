"""cpu_info, ISA choice (automatic, forced by PYTRANSFORMER_ISA, switched at run time) and the CLI self-check."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import pytransformer


def test_cpu_info_reports_the_machine():
    info = pytransformer.cpu_info()
    assert set(info) >= {"isa", "available_isas", "openmp", "num_threads", "cuda"}
    assert info["isa"] in info["available_isas"]
    assert info["available_isas"][0] == "baseline"
    assert info["isa"] == info["available_isas"][-1]  # the best supported variant is the default
    assert info["num_threads"] >= 1
    assert info["cuda"] is False
    assert info["matmul_precision"] == "float32"


FREED_ARRAYS = """
import resource, numpy as np, pytransformer
a = np.ones(1 << 21, np.float32); del a  # 8 MiB: over glibc's first mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    a = np.ones(1 << 21, np.float32); del a
print(pytransformer.cpu_info()["malloc_tuned"], resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc is what the import tunes")
def test_freed_arrays_are_reused_without_faulting_their_pages_in_again():
    # a forward pass's fresh arrays (MiBs each) took new mappings from glibc and faulted their pages in again: 19% of
    # a prefill's CPU time (runtime.cpp tune_malloc). 8 MiB is 2,048 pages of 4 KiB or 4 huge pages: 20 arrays
    # reusing the first one's memory fault none (483 in all without the tuning on the machine that wrote this)
    tuned, faults = run_python(FREED_ARRAYS).stdout.split()
    untuned, untuned_faults = run_python(FREED_ARRAYS, PYTRANSFORMER_MALLOC_TUNING="0").stdout.split()
    assert (tuned, untuned) == ("True", "False")
    assert int(faults) < 20, f"{faults} page faults ({untuned_faults} with PYTRANSFORMER_MALLOC_TUNING=0)"


def test_a_malloc_tuning_setting_other_than_0_or_1_fails_at_import():
    r = run_python("import pytransformer", PYTRANSFORMER_MALLOC_TUNING="off")
    assert r.returncode != 0 and "PYTRANSFORMER_MALLOC_TUNING must be 0 or 1, got 'off'" in r.stderr


def test_amx_is_reported_only_where_the_cpu_has_it():
    info = pytransformer.cpu_info()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    has = {"amx_bf16", "amx_tile", "avx512_bf16"} <= flags
    if info["amx_bf16"]:
        assert has
    elif has and int(os.uname().release.split(".")[0]) >= 6:  # Linux grants tile state since 5.16
        pytest.fail("the CPU and kernel have AMX-BF16 but pytransformer does not use it")


def run_python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd="/")


@pytest.mark.parametrize("isa", pytransformer.cpu_info()["available_isas"])
def test_environment_variable_forces_the_isa(isa):
    r = run_python("import pytransformer; print('ISA=' + pytransformer.cpu_info()['isa'] + ';')", PYTRANSFORMER_ISA=isa)
    assert r.returncode == 0, r.stderr
    assert f"ISA={isa};" in r.stdout


def test_unknown_isa_in_the_environment_is_a_clear_error():
    r = run_python("import pytransformer", PYTRANSFORMER_ISA="sse9")
    assert r.returncode != 0
    assert "PYTRANSFORMER_ISA=sse9 is unknown" in r.stderr


@pytest.mark.parametrize("setting", [{"PYTRANSFORMER_ISA": "sse9"}, {"PYTRANSFORMER_MALLOC_TUNING": "off"},
                                     {"PYTRANSFORMER_INT8_DOT": "tile"}, {"PYTRANSFORMER_POPCOUNT": "popcnt"}])
def test_a_bad_setting_is_one_line_from_the_command_line(setting, tmp_path):
    script = tmp_path / "pytransformer"  # (what the console script runs, under its name)
    script.write_text("import sys\nfrom pytransformer.cli import run\nsys.exit(run())\n")
    env = {**os.environ, **setting, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    for argv in ([sys.executable, "-m", "pytransformer", "info"], [sys.executable, str(script), "info"]):
        r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/")
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("pytransformer: error: PYTRANSFORMER_"), r.stderr


def test_set_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown ISA 'mmx'"):
        pytransformer.set_isa("mmx")


def test_omp_num_threads_is_honoured():
    r = run_python("import pytransformer; print(f'THREADS={pytransformer.get_num_threads()};')", OMP_NUM_THREADS="1")
    assert "THREADS=1;" in r.stdout, r.stderr


def test_info_command_prints_the_machine_and_passes_its_self_check():
    r = subprocess.run([sys.executable, "-m", "pytransformer", "info"], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"isa: {pytransformer.cpu_info()['isa']}" in r.stdout
    assert "FAIL" not in r.stdout
    assert r.stdout.count("pass") >= 12


def test_core_stub_names_every_bound_function_with_its_arity():
    """pytransformer/_core.pyi types the pybind11 module: the same functions, each with as many arguments."""
    import ast
    import pathlib
    import re

    from pytransformer import _core

    stub = pathlib.Path(pytransformer.__file__).with_name("_core.pyi").read_text()
    tree = ast.parse(stub).body
    stubbed = {f.name: len(f.args.args) for f in tree if isinstance(f, ast.FunctionDef)}
    classes = {c.name: sorted(f.name for f in c.body if isinstance(f, ast.FunctionDef)) for c in tree
               if isinstance(c, ast.ClassDef)}
    bound_classes = {name: sorted(m for m in ("__init__", "step", "step_batch") if hasattr(getattr(_core, name), m))
                     for name in dir(_core) if isinstance(getattr(_core, name), type)}
    assert classes == bound_classes
    bound = {}
    for name in dir(_core):
        fn = getattr(_core, name)
        if not name.startswith("_") and callable(fn) and not isinstance(fn, type):
            signature = fn.__doc__.splitlines()[0]
            args = re.match(rf"{name}\((.*)\) ->", signature).group(1)
            bound[name] = 0 if not args else len(re.findall(r"(?:^|, )\w+:", args))
    assert stubbed == bound


EXIT_WITH_KERNELS_RUNNING = """
import threading, time
import numpy as np
from pytransformer import ops

def loop(x):
    while True:
        ops.matmul_forward(x, x)

small, large = np.ones((64, 64), np.float32), np.ones((1024, 1024), np.float32)
for x in (small, small, large):  # short kernels end during the interpreter's exit; a long one is running through it
    threading.Thread(target=loop, args=(x,), daemon=True).start()
time.sleep(0.3)
print("exiting", flush=True)
"""


def test_exiting_while_daemon_threads_run_kernels_is_clean():
    """A daemon thread that finishes a kernel while the interpreter exits is ended by CPython inside the GIL's
    reacquisition (pthread_exit); that used to abort the process ("terminate called without an active exception",
    exit status 134) on every run."""
    for _ in range(3):
        r = run_python(EXIT_WITH_KERNELS_RUNNING)
        assert (r.returncode, r.stdout) == (0, "exiting\n"), r.stderr
        assert "terminate" not in r.stderr
