"""The package's modules import one way: a walk over every `import` statement in pytransformer/ (static, by
`ast`, function bodies included) finds no cycle, and the layers keep their order (models never import io)."""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pytransformer"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports. `from X import name` counts as importing X.name when that is
    a module, else X. A package's own __init__ importing its children is an edge like any other; the implicit
    import of a parent package (Python runs it before a child) is not, since it is not written anywhere."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    # compiled modules are leaves: the pybind11 core (its stub _core.pyi) and the Cython tokenizer loops
    leaves = {module_name(p) for p in (*PACKAGE.rglob("*.pyi"), *PACKAGE.rglob("*.pyx"))}
    known = set(files) | leaves
    graph = {name: set() for name in leaves}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.split(".")[0] == "pytransformer")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "pytransformer":
                    continue
                for alias in node.names:
                    edges.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
        graph[name] = {e for e in edges if e in known and e != name}
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walk_sees_the_package():
    graph = import_graph()
    assert "pytransformer.ops" in graph and "pytransformer.models.gpt" in graph
    assert "pytransformer.ops" in graph["pytransformer.nn.layers"]


def test_the_walk_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("lower,upper", [("pytransformer.models", "pytransformer.io"),
                                         ("pytransformer.nn", "pytransformer.models"),
                                         ("pytransformer.nn", "pytransformer.io"),
                                         ("pytransformer.ops", "pytransformer.nn")])
def test_lower_layers_never_import_upper_ones(lower, upper):
    graph = import_graph()
    offenders = sorted(f"{m} -> {e}" for m, edges in graph.items() if m.startswith(lower)
                       for e in edges if e.startswith(upper))
    assert not offenders, offenders


def test_only_ops_and_the_runtime_reach_the_compiled_core():
    """ops is the checked (and unchecked hot-path) face of every kernel, _runtime the face of threads, ISA and
    precision: nothing else imports _core."""
    graph = import_graph()
    importers = sorted(m for m, edges in graph.items() if "pytransformer._core" in edges)
    assert importers == ["pytransformer._runtime", "pytransformer.ops"], importers


@pytest.mark.parametrize("layer", ["pytransformer.nn", "pytransformer.models", "pytransformer.optim",
                                   "pytransformer.generate", "pytransformer.serve", "pytransformer.io"])
def test_layers_above_ops_never_name_a_device(layer):
    """The array namespace in ops is the one place above the kernels that knows a device exists."""
    graph = import_graph()
    offenders = sorted(m for m, edges in graph.items() if m.startswith(layer) and "pytransformer.cuda" in edges)
    assert not offenders, offenders


def test_the_source_folder_without_its_compiled_core_says_so(tmp_path):
    """Python started in a checkout imports its source folder, which has no compiled core until it is built there:
    one clear ImportError naming the folder (not a circular-import puzzle), and the command line's one line."""
    shutil.copytree(PACKAGE, tmp_path / "pytransformer",
                    ignore=lambda d, names: [n for n in names if n.endswith((".so", ".pyd")) or n == "__pycache__"])
    r = subprocess.run([sys.executable, "-c", "import pytransformer"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and r.stderr.splitlines()[-1].startswith("ImportError: "), r.stderr
    assert "has no compiled core" in r.stderr and "pip install ." in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "pytransformer", "--help"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().startswith("pytransformer: error: ") and "no compiled core" in r.stderr, r.stderr
