"""Every dmenet module imports on its own, and dmenet's import graph has no circle.

The graph is read from the source with ``ast``: every ``import`` / ``from ... import`` of a
dmenet module, at module level or inside a function (a lazy import is still a dependency).
Importing ``a.b.c`` also runs the packages ``a.b`` and ``a``, so those are edges too, except
a module's own enclosing packages (they are already being imported when it runs).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "dmenet"


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{"dmenet.x.y": (path, is_package)}`` for every .py file under dmenet/."""
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


MODULES = _modules()


def _imported_names(name: str, path: Path, is_package: bool) -> set[str]:
    """Dotted names this module imports (absolute; relative imports resolved)."""
    package = name if is_package else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            # `from dmenet.modules import contracts` imports a submodule
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """``{module: {dmenet modules whose import it triggers}}``."""
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in MODULES.items():
        edges = set()
        for target in _imported_names(name, path, is_package):
            while target and target not in MODULES:  # `from m import function` -> m
                target = target.rpartition(".")[0]
            while target:  # the module and the packages it runs
                if target != name and not name.startswith(target + "."):
                    edges.add(target)
                target = target.rpartition(".")[0]
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_cycle_finder_sees_a_circle_through_a_package():
    graph = {"p": {"p.a"}, "p.a": {"q"}, "q": {"p"}}
    assert find_cycles(graph) == [["p", "p.a", "q", "p"]]


def test_graph_reads_the_registry_edges():
    graph = import_graph()
    assert "dmenet.registry" in graph["dmenet.modules.blur_estimator"]
    # zhuo_sim runs the dmenet.modules package to reach the shared contracts
    assert {"dmenet.modules", "dmenet.modules.contracts"} <= graph["dmenet.evaluation.zhuo_sim"]


def test_dmenet_import_graph_has_no_circle():
    assert find_cycles(import_graph()) == []


def test_registry_and_contracts_import_nothing_from_dmenet():
    graph = import_graph()
    assert graph["dmenet.registry"] == set()
    assert graph["dmenet.modules.contracts"] == set()


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module whose import ``start``'s import triggers, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_reachable_follows_chains():
    assert _reachable({"a": {"b"}, "b": {"c"}, "c": set()}, "a") == {"b", "c"}


def test_data_imports_nothing_from_evaluation():
    # the data layer reads datasets; evaluation scores predictions on them, not the reverse
    graph = import_graph()
    data_modules = [n for n in graph if n == "dmenet.data" or n.startswith("dmenet.data.")]
    assert "dmenet.data.real" in data_modules
    assert _upward_imports(graph, data_modules, "dmenet.evaluation") == {}


def _upward_imports(graph: dict[str, set[str]], floor: list[str], above: str) -> dict[str, list[str]]:
    """``{module of floor: [modules under the package above it reaches]}``, offenders only."""
    offending = {
        name: sorted(m for m in _reachable(graph, name) if m == above or m.startswith(above + "."))
        for name in floor
    }
    return {name: mods for name, mods in offending.items() if mods}


def test_upward_import_finder_sees_an_indirect_one():
    graph = {"p.data.a": {"p.util"}, "p.util": {"p.inference.x"}, "p.inference.x": set()}
    assert _upward_imports(graph, ["p.data.a"], "p.inference") == {"p.data.a": ["p.inference.x"]}


def test_data_and_the_lightning_module_import_nothing_from_inference():
    # training sits below the user tools: what both need (checkpoints, tiling, photo lists)
    # lives one floor down (dmenet.checkpoint, dmenet.tiling, dmenet.data.photos)
    graph = import_graph()
    floor = [n for n in graph if n == "dmenet.data" or n.startswith("dmenet.data.")]
    floor.append("dmenet.lightning_model")
    assert {"dmenet.data.datamodule", "dmenet.data.photos"} <= set(floor)
    assert _upward_imports(graph, floor, "dmenet.inference") == {}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "dmenet.__main__"))
def test_every_module_imports(name):
    assert importlib.import_module(name).__name__ == name
