"""The import directions between the packages (docs/layout.md), read from the sources with ``ast``.

``detectron_parity`` is the bottom layer (standard library only); ``convert`` never imports
``parity``; ``parity`` is free of ``rcnn``/``convert`` except in its three modules that drive a
model (and there only inside functions, so ``import parity`` stays light); ``rcnn`` imports
``parity`` only in its engine, which scores what it runs, and in its command-line programs.
Module-level imports form no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("detectron_parity", "rcnn", "convert", "parity")
# parity's modules that run the detector (zoo run, proposal recall of a proposal file, the CLI).
PARITY_DRIVERS = {"parity.__main__", "parity.zoo_run", "parity.proposals"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported module, run at import time)`` for every absolute import of the file (those in
    functions and in ``if TYPE_CHECKING:`` blocks are not run at import time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import name`: pkg, and pkg.name in case that is a module
            found += [(node.module, id(node) in top)] + [(f"{node.module}.{a.name}", id(node) in top)
                                                         for a in node.names]
    return found


def _graph() -> dict[str, list[tuple[str, bool]]]:
    graph = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            graph[_module_name(path)] = [(m, top) for m, top in _imports(path) if m.split(".")[0] in PACKAGES]
    return graph


def _package(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_is_read():
    graph = _graph()
    assert ("detectron_parity.fileio", True) in graph["rcnn.engine.test_engine"]
    assert ("rcnn.config", False) in graph["parity.zoo_run"]


def test_detectron_parity_is_the_bottom_layer():
    bad = [(m, i) for m, imps in _graph().items() if _package(m) == "detectron_parity"
           for i, _ in imps if _package(i) != "detectron_parity"]
    assert bad == []


def test_convert_does_not_import_parity():
    bad = [(m, i) for m, imps in _graph().items() if _package(m) == "convert" for i, _ in imps
           if _package(i) == "parity"]
    assert bad == []


def test_parity_is_free_of_rcnn_and_convert_but_its_drivers():
    bad, lazy = [], []
    for module, imps in _graph().items():
        if _package(module) != "parity":
            continue
        for imported, top in imps:
            if _package(imported) in ("rcnn", "convert"):
                (lazy if module in PARITY_DRIVERS and not top else bad).append((module, imported))
    assert bad == []
    assert lazy   # the drivers exist and still import lazily; this test would otherwise say nothing


def test_rcnn_imports_parity_only_in_its_engine_and_commands():
    bad = [(m, i) for m, imps in _graph().items()
           if _package(m) == "rcnn" and not m.startswith(("rcnn.engine.", "rcnn.commands."))
           for i, _ in imps if _package(i) == "parity"]
    assert bad == []


def test_module_level_imports_have_no_cycle():
    graph = _graph()
    edges = {m: {i for i, top in imps if top and i in graph} - {m} for m, imps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    cycles = [c for m in sorted(graph) if m not in state and (c := visit(m, []))]
    assert cycles == []


def test_the_packages_are_this_checkouts():
    """A top-level ``convert`` or ``parity`` of another distribution would shadow ours
    (docs/layout.md §4): the suite fails instead of testing it."""
    import importlib

    for package in PACKAGES:
        path = Path(importlib.import_module(package).__file__).resolve()
        assert path == ROOT / package / "__init__.py", (package, path)
