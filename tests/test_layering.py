"""Layering (issues 9 and 19): core modules never import capability packages, and prunekit's modules import
each other without cycles of any length.

The import graph is read from the source (the AST of every file under ``src/prunekit``), so a lazy
import that would only fail at run time is seen too. An edge ``a -> b`` means that running ``a``
imports ``b``:

* ``import x.y`` and ``from x import y`` count ``x.y`` when it is a module, else ``x``; relative imports
  are resolved against ``a``'s package;
* importing ``x.y.z`` also runs the ``__init__`` of its packages ``x`` and ``x.y`` (except the packages
  ``a`` itself lives in: Python has loaded those before ``a`` starts);
* a name a package re-exports lazily (its ``_LAZY`` table, loaded by its ``__getattr__``) counts the
  module the table names; a name it re-exports with a plain import counts the package, whose own
  edges lead on to the module that defines it.

Two graphs are checked. *Module level*: the statements that run when a module is imported (its body,
the ``if``/``try``/``with`` blocks and class bodies in it) and the imports under ``if TYPE_CHECKING:``
(a type-only import is still a dependency in the design). *All levels*: the same plus the imports
inside functions, except inside the ``main`` function of a module that calls it under
``if __name__ == "__main__"`` (a ``python -m prunekit.<package>.cli`` entry point handing over to the one
CLI; nothing imports it, so it closes no cycle at run time). Imports made by ``importlib`` with a
computed name are not seen.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "prunekit"
CAPABILITIES = ("prunekit.oneshot", "prunekit.structured", "prunekit.training", "prunekit.data",
                "prunekit.evaluate", "prunekit.cli", "prunekit.zoo", "prunekit.vocab", "prunekit.delta")


def module_name(path: Path) -> str:
    return ".".join(("prunekit", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


FILES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}
TREES = {m: ast.parse(p.read_text()) for m, p in FILES.items()}
PACKAGES = {module_name(p) for p in SRC.rglob("__init__.py")}


def lazy_table(package: str) -> dict[str, str]:
    """A package's ``_LAZY = {name: module}`` table (module names absolute or relative to the package)."""
    for node in TREES[package].body if package in PACKAGES else ():
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            table = ast.literal_eval(node.value)
            return {k: v if v in FILES else f"{package}.{v}" for k, v in table.items()}
    return {}


LAZY = {p: lazy_table(p) for p in PACKAGES}


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test)


def import_statements(tree: ast.Module, functions: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module: those run at import time, and with ``functions`` those in
    function bodies too (but not in a ``main`` run under ``if __name__ == "__main__"``)."""
    entry = {"main"} if any(_is_main_guard(n) for n in tree.body) else set()
    found = []

    def visit(nodes: list[ast.AST], depth: int) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if functions and not (depth == 0 and node.name in entry):
                    visit(list(ast.iter_child_nodes(node)), depth + 1)
            else:
                visit(list(ast.iter_child_nodes(node)), depth)

    visit(tree.body, 0)
    return found


def targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The prunekit modules one import statement of ``module`` runs (see the module docstring)."""
    if isinstance(node, ast.Import):
        names = {a.name for a in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module if module in PACKAGES else module.rpartition(".")[0]
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        names = set()
        for alias in node.names:
            full = f"{base}.{alias.name}"
            names.add(full if full in FILES else LAZY.get(base, {}).get(alias.name, base))
    found = set()
    for name in names:
        if not name.startswith("prunekit"):
            continue
        parts = name.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    own_packages = {module.rsplit(".", i)[0] for i in range(module.count(".") + 1)}
    return {m for m in found if m in FILES and m not in own_packages}


def graph(functions: bool) -> dict[str, set[str]]:
    return {m: set().union(*(targets(m, n) for n in import_statements(t, functions))) for m, t in TREES.items()}


def tangles(g: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds cycles."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while v not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                components.append(component)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(g)))
    try:
        for v in sorted(g):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)
    return components


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through the first module of each tangle."""
    return [shortest_cycle(g, c) for c in tangles(g)]


def shortest_cycle(g: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    came_from, queue = {start: None}, deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(g[v] & component):
            if w == start:
                path = [v]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if w not in came_from:
                came_from[w] = v
                queue.append(w)
    raise AssertionError(f"{sorted(component)} is not strongly connected")


MODULE_LEVEL = graph(functions=False)
ALL_LEVELS = graph(functions=True)


def _describe(g: dict[str, set[str]]) -> str:
    """Each tangle as one of its shortest cycles and all its modules."""
    short = [m.removeprefix("prunekit.") for m in sorted(set().union(*tangles(g)))]
    found = [" -> ".join(m.removeprefix("prunekit.") for m in c) for c in cycles(g)]
    return f"{'; '.join(found)} (modules in these tangles: {', '.join(short)})"


def test_core_imports_no_capability():
    bad = {m: sorted(d for d in deps if d.startswith(CAPABILITIES))
           for m, deps in ALL_LEVELS.items() if m.startswith("prunekit.core")}
    assert not {m: d for m, d in bad.items() if d}


def test_no_import_cycle_at_module_level():
    assert not tangles(MODULE_LEVEL), f"import cycles at module level: {_describe(MODULE_LEVEL)}"


def test_no_import_cycle_through_function_imports():
    assert not tangles(ALL_LEVELS), f"import cycles (function-level imports counted): {_describe(ALL_LEVELS)}"


def test_the_cycle_finder_sees_long_cycles_re_exports_and_lazy_tables():
    g = {"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"a"}, "e": {"a"}, "f": {"f2"}, "f2": set()}
    assert cycles(g) == [["a", "b", "c", "d", "a"]] and tangles(g) == [{"a", "b", "c", "d"}]
    assert cycles({"a": {"b"}, "b": set()}) == []
    criteria = "prunekit.structured.criteria"
    plain = ast.parse(f"from {criteria} import base\nfrom {criteria}.base import Criterion").body
    assert targets("prunekit.cli", plain[0]) == {"prunekit.structured", criteria, f"{criteria}.base"}
    assert targets(f"{criteria}.flap", plain[1]) == {f"{criteria}.base"}  # its own packages are loaded already
    lazy = ast.parse("from prunekit.structured import prune_structured").body[0]
    assert "prunekit.structured.prune" in targets("prunekit.cli", lazy)
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import prunekit.zoo\n"
                      "def f():\n    import prunekit.cli\n")
    assert [n.names[0].name for n in import_statements(typed, functions=False)] == ["TYPE_CHECKING", "prunekit.zoo"]
    assert len(import_statements(typed, functions=True)) == 3


def test_importing_the_core_loads_no_capability():
    code = ("import sys, importlib, pkgutil, prunekit.core as c\n"
            "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('prunekit.core.' + m.name)\n"
            f"print(sorted(n for n in sys.modules if n.startswith({CAPABILITIES!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
