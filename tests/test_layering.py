"""Layering (issue 9): core modules never import capability packages, and no two modules import each other.

Imports are read from the source (at any level, function-local ones included), so a lazy import that
would only fail at run time is caught too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "prunekit"
CAPABILITIES = ("prunekit.oneshot", "prunekit.structured", "prunekit.training", "prunekit.data",
                "prunekit.evaluate", "prunekit.cli", "prunekit.zoo", "prunekit.vocab", "prunekit.delta")


def module_name(path: Path) -> str:
    return ".".join(("prunekit", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prunekit"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("prunekit")}
    return found


GRAPH = {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def test_core_imports_no_capability():
    bad = {m: sorted(d for d in deps if d.startswith(CAPABILITIES))
           for m, deps in GRAPH.items() if m.startswith("prunekit.core")}
    assert not {m: d for m, d in bad.items() if d}


def test_no_two_modules_import_each_other():
    pairs = [(a, b) for a, deps in GRAPH.items() for b in deps if a < b and a in GRAPH.get(b, ())]
    assert not pairs


def test_importing_the_core_loads_no_capability():
    code = ("import sys, importlib, pkgutil, prunekit.core as c\n"
            "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('prunekit.core.' + m.name)\n"
            f"print(sorted(n for n in sys.modules if n.startswith({CAPABILITIES!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
