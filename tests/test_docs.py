"""The documentation runs as written: every ```python block of README.md and docs/tour.md runs on its own in a
fresh interpreter (nothing undefined, no `return` outside a function, no path tricks), every `pytransformer ...`
line of a ```bash block parses with the real command line, every `python SCRIPT` it names exists, and no bench
script shadows an installed package.

A block may be preceded by a marker comment the readers of the page do not see, its parts separated by `;`:
    <!-- doctest: needs MODULE ... -->    skipped unless every module imports (`cuda-device`: a GPU answers)
    <!-- doctest: path examples -->       that folder of the repository on the import path (as its text says)
    <!-- doctest: skip REASON -->         not run, for the reason given (it needs a server started by hand)
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/tour.md"]
BLOCK = re.compile(r"(?:<!--\s*doctest:\s*(?P<marker>[^>]*?)\s*-->\s*\n)?```(?P<lang>\w*)\n(?P<code>.*?)\n```", re.S)


def blocks(lang):
    """(id, code, marker) of every block of that language on the pages."""
    found = []
    for page in PAGES:
        text = (ROOT / page).read_text()
        for m in BLOCK.finditer(text):
            if m.group("lang") == lang:
                line = text.count("\n", 0, m.start("code"))
                found.append(pytest.param(m.group("code"), m.group("marker") or "", id=f"{page}:{line}"))
    return found


def available(name):
    if name == "cuda-device":
        from pytransformer import cuda

        return cuda.is_available()
    return importlib.util.find_spec(name) is not None


def marker_says(marker):
    """(skip reason or None, folders for the import path) from a block's marker."""
    skip, path = None, []
    for part in filter(None, (p.strip() for p in marker.split(";"))):
        kind, _, rest = part.partition(" ")
        if kind == "skip":
            assert rest, "a skipped block says why"
            skip = rest
        elif kind == "needs":
            missing = [name for name in rest.split() if not available(name)]
            skip = skip or (f"needs {', '.join(missing)}" if missing else None)
        elif kind == "path":
            path.append(str(ROOT / rest))
        else:
            raise AssertionError(f"unknown doctest marker {part!r}")
    return skip, path


def test_the_pages_have_blocks_of_both_kinds():
    assert len(blocks("python")) >= 20 and len(blocks("bash")) >= 8


@pytest.mark.parametrize("code,marker", blocks("python"))
def test_python_block_runs_as_written(code, marker, tmp_path):
    skip, path = marker_says(marker)
    if skip:
        pytest.skip(skip)
    # (pytransformer as this interpreter imports it: installed, or the developer's PYTHONPATH)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join([*path, *filter(None, [os.environ.get("PYTHONPATH")])])
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def commands(code):
    """Each command of a bash block: lines joined at `\\`, split at `&&`, `|` and `;`, comments dropped."""
    code = re.sub(r"\\\n\s*", " ", code)
    for line in code.splitlines():
        for part in re.split(r"&&|\|\|?|;", line.split(" #")[0]):
            words = shlex.split(part)
            while words and (re.fullmatch(r"[A-Z_]+=\S*", words[0]) or words[0] in ("mpiexec", "-n")
                             or words[0].isdigit()):
                words = words[1:]  # environment settings and `mpiexec -n N` in front of the command
            if words:
                yield words


@pytest.mark.parametrize("code,marker", blocks("bash"))
def test_bash_block_commands_parse(code, marker):
    """`pytransformer ...` parses with the real parser (nothing runs); `python FILE` names a file that exists."""
    from pytransformer.cli import build_parser, parse

    for words in commands(code):
        if words[0] == "pytransformer":
            try:
                parse(build_parser(), words[1:])
            except SystemExit as e:
                pytest.fail(f"{' '.join(words)}: exit {e.code}")
        elif words[0] == "python" and words[1].endswith(".py"):
            assert (ROOT / words[1]).is_file(), words[1]


def test_no_bench_script_shadows_an_installed_package():
    """`python bench/X.py` puts bench/ first on sys.path: a bench/kernels.py hid the `kernels` package that
    transformers imports, and every bench script that imported transformers crashed."""
    clashes = [p.name for p in (ROOT / "bench").glob("*.py") if importlib.util.find_spec(p.stem) is not None]
    assert not clashes, f"bench scripts named like installed modules: {clashes}"


def test_help_pytransformer_lists_the_public_api_and_every_public_name_has_a_docstring():
    import inspect

    import pytransformer

    doc = pytransformer.__doc__
    for name in pytransformer.__all__:
        if name != "__version__":
            assert name in doc, f"{name} is missing from pytransformer's docstring (help(pytransformer))"
            obj = getattr(pytransformer, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                assert (obj.__doc__ or "").strip(), f"pytransformer.{name} has no docstring"
    assert "pytransformer --help" in doc


def test_the_tour_page_shows_the_code_examples_tour_py_runs():
    """docs/tour.md is written by examples/tour.py: its blocks are the steps' code, in order (a stale page fails)."""
    import runpy

    tour = runpy.run_path(str(ROOT / "examples" / "tour.py"))  # (defines the steps; runs nothing)
    shown = [m.group("code") for m in BLOCK.finditer((ROOT / "docs" / "tour.md").read_text())
             if m.group("lang") == "python"]
    assert shown == [tour["source"](fn) for _, _, fn, _, _ in tour["STEPS"]]
