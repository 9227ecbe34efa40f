"""The modules of ``mtl`` import one another without a cycle.

The graph is read from the source with ``ast``, so it sees every import: at module level and
inside functions (where a cycle hides until the function runs), absolute and relative; only the
imports under ``if TYPE_CHECKING:`` (type annotations, never run) are left out. Importing
``a.b.c`` runs ``a/b/__init__.py`` first, so it is an edge to ``a.b`` too. An edge between a
package's ``__init__`` and a module inside that package does not count: Python runs the
``__init__`` first either way, and ``mtl/__init__.py`` names its submodules on purpose.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "mtl"


def module_name(path: Path, root: Path) -> str:
    """``root/a/b.py`` -> ``a.b`` and ``root/a/__init__.py`` -> ``a`` (root is the folder above the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """``{module: {modules of the same package it imports}}`` for every ``.py`` under ``package_dir``.

    ``import a.b`` and ``from a.b import c`` are edges to ``a.b``; the latter is an edge to
    ``a.b.c`` too where ``c`` is a module. Every package above an imported module is imported
    with it (an edge to ``a`` as well). Relative imports are resolved against the importing
    module's package. Imports of other packages are left out.
    """
    root = package_dir.parent
    paths = sorted(package_dir.rglob("*.py"))
    modules = {module_name(p, root): p for p in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                targets.add(source)
                targets.update(f"{source}.{alias.name}" for alias in node.names)
        with_packages = {".".join(t.split(".")[:i]) for t in targets for i in range(1, t.count(".") + 2)}
        graph[name] = {t for t in with_packages if t in modules and t != name}
    return graph


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
                                         or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (their ``else`` runs: kept)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if _type_checking(node):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def _inside(module: str, package: str) -> bool:
    return module.startswith(package + ".")


def without_own_package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph less the edges between a package's ``__init__`` and the modules inside it."""
    return {a: {b for b in targets if not (_inside(a, b) or _inside(b, a))} for a, targets in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when the graph is a DAG (depth-first search)."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_stack:
                return stack[stack.index(target):] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def all_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per edge that closes one, found by removing each cycle's closing edge in turn."""
    graph = {a: set(targets) for a, targets in graph.items()}
    cycles = []
    while (cycle := find_cycle(graph)) is not None:
        cycles.append(cycle)
        graph[cycle[-2]].discard(cycle[-1])
    return cycles


def _mtl_graph() -> dict[str, set[str]]:
    return without_own_package_edges(import_graph(PACKAGE_DIR))


def test_mtl_imports_have_no_cycle():
    cycles = all_cycles(_mtl_graph())
    assert not cycles, "import cycles in mtl/:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    """Whether a path of imports leads from ``start`` to ``goal``."""
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


# ---- the graph builder itself, on a small package written for the test ----------------------
def _write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


def test_graph_reads_every_kind_of_import(tmp_path):
    package = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": """
            import os
            import pkg.b
            from pkg.sub import c
            from . import d
            def later():
                from .sub.e import thing
        """,
        "pkg/b.py": "from pkg import sub\n",
        "pkg/d.py": "",
        "pkg/sub/__init__.py": "from .c import x\nfrom .. import d\n",
        "pkg/sub/c.py": "x = 1\n",
        "pkg/sub/e.py": "from ..b import y\nfrom pkg.sub import x\n",
    })
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.d", "pkg.sub.e"}  # not os
    assert graph["pkg.b"] == {"pkg", "pkg.sub"}
    assert graph["pkg.sub"] == {"pkg", "pkg.sub.c", "pkg.d"}
    assert graph["pkg.sub.e"] == {"pkg", "pkg.b", "pkg.sub"}  # x is a name, not a module: the edge is to pkg.sub
    assert graph["pkg"] == set()


def test_imports_for_type_annotations_only_are_no_edges(tmp_path):
    package = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": """
            import typing
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from pkg.b import B
            else:
                from pkg import c
            if typing.TYPE_CHECKING:
                import pkg.d
        """,
        "pkg/b.py": "", "pkg/c.py": "", "pkg/d.py": "",
    })
    assert import_graph(package)["pkg.a"] == {"pkg", "pkg.c"}


def test_cycle_through_a_function_level_import_is_found(tmp_path):
    package = _write_package(tmp_path, {
        "pkg/__init__.py": "from pkg import a\n",  # a package and its own modules: not a cycle
        "pkg/a.py": "import pkg\nfrom pkg import b\n",
        "pkg/b.py": "def f():\n    from pkg.c import g\n",
        "pkg/c.py": "from .a import h\n",
    })
    graph = without_own_package_edges(import_graph(package))
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    assert reaches(graph, "pkg.a", "pkg.c") and reaches(graph, "pkg.c", "pkg.b")
    graph["pkg.c"].discard("pkg.a")
    assert find_cycle(graph) is None
    assert not reaches(graph, "pkg.c", "pkg.b")


def test_importing_a_module_runs_the_packages_above_it(tmp_path):
    package = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "from pkg import high\n",  # the package's __init__ imports upwards
        "pkg/low/base.py": "",
        "pkg/high.py": "from pkg.low.base import x\n",  # runs pkg/low/__init__.py first
    })
    graph = without_own_package_edges(import_graph(package))
    assert find_cycle(graph) == ["pkg.high", "pkg.low", "pkg.high"]


def test_all_cycles_lists_each_cycle(tmp_path):
    package = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "from pkg import a\n",
        "pkg/x/__init__.py": "from pkg.y import z\n",
        "pkg/y/__init__.py": "",
        "pkg/y/z.py": "import pkg.x\n",
    })
    cycles = all_cycles(without_own_package_edges(import_graph(package)))
    assert cycles == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.x", "pkg.y.z", "pkg.x"]]


@pytest.mark.parametrize("graph, cyclic", [({"a": {"b"}, "b": {"c"}, "c": set()}, False),
                                            ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
                                            ({"a": {"a"}}, True)])
def test_find_cycle_on_small_graphs(graph, cyclic):
    assert (find_cycle(graph) is not None) == cyclic
