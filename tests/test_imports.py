"""The package's import structure: ``import fewstep`` stays light, the modules import no cycle, the core never
imports the benchmark tooling, and the ``fewstep`` command says what to install when the ``bench`` extra is
missing."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import fewstep
import fewstep.cli

SRC = Path(fewstep.__file__).resolve().parents[1]  # the directory holding the fewstep package under test
PACKAGE = SRC / "fewstep"

#: What ``import fewstep`` must not load: the ``bench`` extra's packages, and scipy (a dependency of the core,
#: needed only by DPM-Solver-v3's statistics).
HEAVY = ("matplotlib", "click", "sklearn", "scipy", "tqdm")

BENCH_MODULES = [
    "fewstep.bench",
    "fewstep.bench.cli",
    "fewstep.bench.compare",
    "fewstep.bench.metrics",
    "fewstep.bench.peers",
    "fewstep.bench.report",
    "fewstep.bench.targets",
]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` in a fresh interpreter that imports the fewstep under test."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def _loaded_after(statement: str) -> list[str]:
    """The :data:`HEAVY` top-level modules that running ``statement`` in a fresh interpreter adds to
    ``sys.modules``. What the interpreter loaded at start-up (e.g. from ``.pth`` files) does not count, nor what
    torch and numpy load themselves (some torch builds import tqdm for ``torch.hub``)."""
    code = (
        "import json, sys\n"
        "import numpy, torch\n"
        "def top(): return sorted({m.partition('.')[0] for m in sys.modules})\n"
        "before = top()\n"
        f"{statement}\n"
        "print(json.dumps(sorted(set(top()) - set(before))))"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    return [m for m in HEAVY if m in loaded]


# ---------------------------------------------------------------------------------------------------- light import


def test_import_fewstep_loads_no_heavy_dependency() -> None:
    """``import fewstep`` (what a diffusers pipeline or a ComfyUI node does) loads none of :data:`HEAVY`."""
    assert _loaded_after("import fewstep") == []


def test_import_fewstep_bench_loads_nothing_more() -> None:
    """``import fewstep.bench`` adds none of the bench extra's packages to what ``import fewstep`` loads: each
    submodule imports what it needs."""
    core = set(_loaded_after("import fewstep"))
    assert [m for m in _loaded_after("import fewstep.bench") if m not in core] == []


@pytest.mark.parametrize("module", BENCH_MODULES)
def test_bench_modules_import(module: str) -> None:
    """With the ``bench`` extra installed (the ``test`` extra includes it) every bench module imports."""
    assert importlib.import_module(module).__name__ == module


# ---------------------------------------------------------------------------------------------------- import graph


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_imports(nodes: Iterable[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: at module level, in class bodies and in
    module-level compound statements (``try``, ``if``), but not in functions or under ``if TYPE_CHECKING:``."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_time_imports(node.orelse)
        else:
            children = ast.iter_child_nodes(node)
            yield from _import_time_imports(
                c for c in children if isinstance(c, ast.stmt | ast.excepthandler | ast.match_case)
            )


def _all_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, function bodies included."""
    return (n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom))


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules of the tree that ``node`` in ``module`` imports: ``from pkg import name`` is ``pkg.name`` when
    that is a module, else ``pkg``; ``import a.b.c`` is ``a.b.c`` (the implicit imports of the parent packages
    are left out). Relative imports are resolved; modules outside the tree are dropped."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            parts = package.split(".")
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    for name in names:
        while name and name not in MODULES:  # ``import a.b.c`` of a name that is not a module: its package
            name = name.rpartition(".")[0]
        if name:
            yield name


def import_graph(import_time_only: bool = True) -> dict[str, set[str]]:
    """module -> the modules of the tree it imports (at import time, or anywhere with ``import_time_only=False``)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = _import_time_imports(tree.body) if import_time_only else _all_imports(tree)
        graph[module] = {t for node in nodes for t in _targets(module, node)}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` that hold a cycle (two or more modules, or a module
    importing itself), each sorted; iterative, so deep graphs do not hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, successors = work[-1]
            w = next(successors, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1 or v in graph[v]:
                    out.append(sorted(component))
    return sorted(out)


def _shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """A shortest import cycle through ``start`` inside the component ``within``, as ``[start, ..., start]``."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & within):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is on no cycle")  # pragma: no cover


def import_cycles(graph: dict[str, set[str]]) -> list[str]:
    """The import cycles of ``graph`` as ``a -> b -> c -> a``: a shortest one through each module of each
    strongly connected component (duplicates, up to rotation, left out)."""
    cycles: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for component in strongly_connected(graph):
        for module in component:
            cycle = _shortest_cycle(graph, module, set(component))
            ring = cycle[:-1]
            key = min(tuple(ring[i:] + ring[:i]) for i in range(len(ring)))
            if key not in seen:
                seen.add(key)
                cycles.append(" -> ".join(cycle))
    return cycles


def test_graph_resolves_imports() -> None:
    """The graph itself: relative imports resolve to modules of the tree (a check of the test's resolver)."""
    graph = import_graph()
    assert "fewstep.bench.metrics" in graph["fewstep.bench.compare"]
    assert "fewstep.sampling" in graph["fewstep.bench.compare"]
    assert "fewstep.schedules" in graph["fewstep.bench.targets.mixture"]
    assert "fewstep.bench.targets.learned" in graph["fewstep.bench.metrics"]
    assert "fewstep.cache" in graph["fewstep.bench.targets.learned"]
    assert "fewstep.sampling" not in graph["fewstep.bench.targets.learned"]  # imported inside a function
    assert "fewstep.bench.cli" not in graph["fewstep.cli"]  # imported inside main()
    assert "fewstep.bench.cli" in import_graph(import_time_only=False)["fewstep.cli"]


def test_no_import_cycles() -> None:
    """No cycle among the imports that run at import time (an import inside a function runs when it is called,
    after every module has loaded, and is the way to use a module that imports this one)."""
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_import_cycle_in_the_core_even_inside_functions() -> None:
    """The core's modules import no cycle even counting the imports inside functions: no module reaches back to
    one that imports it (the benchmark tooling and the launcher, which import the core, are left out)."""
    tooling = ("fewstep.bench", "fewstep.cli", "fewstep.__main__")
    graph = {
        m: {t for t in targets if not t.startswith(tooling)}
        for m, targets in import_graph(import_time_only=False).items()
        if not m.startswith(tooling)
    }
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_import_cycle_through_bench_or_cli() -> None:
    """The benchmark tooling and the launcher are on no import cycle (whatever the state of the core)."""
    ours = ("fewstep.bench", "fewstep.cli", "fewstep.__main__")
    cycles = [c for c in import_cycles(import_graph()) if any(m.startswith(ours) for m in c.split(" -> "))]
    assert not cycles, "import cycles through fewstep.bench or the command line:\n" + "\n".join(cycles)


def test_core_does_not_import_bench() -> None:
    """No module outside ``fewstep.bench`` imports it, not even inside a function, except the launcher, and the
    package's public name ``fewstep.generate`` (``fewstep.bench.generation``), loaded on first use only."""
    graph = import_graph(import_time_only=False)
    offenders = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if not m.startswith("fewstep.bench") and m != "fewstep.cli"
        for t in targets
        if t.startswith("fewstep.bench") and (m, t) != ("fewstep", "fewstep.bench.generation")
    )
    assert offenders == []


def test_tarjan_and_cycle_format() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"d"}}
    assert strongly_connected(graph) == [["a", "b", "c"], ["e"]]
    assert import_cycles(graph) == ["a -> b -> c -> a", "e -> e"]


# ---------------------------------------------------------------------------------------------------- command line

HINT = 'pip install "fewstep[bench]"'


@pytest.mark.parametrize(
    ("blocked", "named"), [("click", "click"), ("matplotlib", "matplotlib"), ("sklearn", "scikit-learn")]
)
def test_cli_without_the_bench_extra(blocked: str, named: str) -> None:
    """A missing package of the ``bench`` extra (simulated: ``sys.modules[name] = None`` blocks its import):
    ``fewstep`` prints one line naming it and the fix, and exits with status 2."""
    done = _python(f"import sys\nsys.modules[{blocked!r}] = None\nimport fewstep.cli\nfewstep.cli.main()")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert named in lines[0] and HINT in lines[0]


def test_python_m_fewstep_without_the_bench_extra() -> None:
    """``python -m fewstep`` goes through the same launcher."""
    done = _python("import runpy, sys\nsys.modules['click'] = None\nrunpy.run_module('fewstep', run_name='__main__')")
    assert done.returncode == 2, done.stderr
    assert "click" in done.stderr and HINT in done.stderr and "Traceback" not in done.stderr


def test_python_m_fewstep_with_the_bench_extra() -> None:
    """With the extra installed, ``python -m fewstep`` runs the click command line."""
    code = "import runpy, sys\nsys.argv = ['fewstep', '--version']\nrunpy.run_module('fewstep', run_name='__main__')"
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert fewstep.__version__ in done.stdout


def test_cli_import_error_of_a_bench_package(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A bench package that is found but fails to import (here: blocked after the check) gets the same message."""
    monkeypatch.setattr(fewstep.cli, "missing_bench_packages", lambda: [])
    monkeypatch.setitem(sys.modules, "click", None)
    monkeypatch.delitem(sys.modules, "fewstep.bench.cli", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        fewstep.cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "click" in err and HINT in err


def test_cli_other_import_errors_propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    """An import error that is not a missing bench package is a bug: it is raised, not turned into the hint."""
    monkeypatch.setitem(sys.modules, "fewstep.bench.cli", None)
    with pytest.raises(ImportError):
        fewstep.cli.main()
