"""No file prunekit reads may run code (issue 8): a grep-level check of every Python file under ``src/``.

Refused, in code (comments and strings do not count):
- ``pickle`` and its relatives (``cPickle``, ``dill``, ``cloudpickle``, ``shelve``, ``marshal``,
  ``joblib``, ``read_pickle``/``to_pickle``);
- ``weights_only=False``, and ``torch.load`` without ``weights_only=True``;
- ``yaml.load``/``yaml.load_all`` without a safe loader, ``yaml.unsafe_load``/``full_load`` and the
  unsafe loader classes;
- ``allow_pickle=True``;
- ``trust_remote_code=True`` (passing on the caller's own ``trust_remote_code`` argument is fine);
- ``eval``/``exec`` of text.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
FILES = sorted(SRC.rglob("*.py"))

PATTERNS = {
    "pickle": re.compile(r"\b(c?pickle|_pickle|dill|cloudpickle|shelve|marshal|joblib|read_pickle|to_pickle)\b"),
    "weights_only=False": re.compile(r"\bweights_only\s*=\s*False\b"),
    "unsafe yaml": re.compile(r"\byaml\s*\.\s*(unsafe_load|full_load|unsafe_load_all|full_load_all|"
                              r"Loader|UnsafeLoader|FullLoader)\b"),
    "allow_pickle=True": re.compile(r"\ballow_pickle\s*=\s*True\b"),
    "trust_remote_code=True": re.compile(r"\btrust_remote_code\s*(:\s*bool\s*)?=\s*True\b"),
}
SAFE_YAML_LOADERS = ("SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader")


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of ``text`` with comments and string literals blanked out."""
    lines = text.splitlines()
    blank = [list(line) for line in lines]
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.STRING) and getattr(tokenize, "FSTRING_MIDDLE", -1) != tok.type:
            continue
        (r0, c0), (r1, c1) = tok.start, tok.end
        for r in range(r0, r1 + 1):
            row = blank[r - 1]
            start = c0 if r == r0 else 0
            stop = c1 if r == r1 else len(row)
            row[start:stop] = " " * (stop - start)
    return [(i + 1, "".join(row)) for i, row in enumerate(blank)]


def _name(node: ast.AST) -> str:
    return ast.unparse(node) if node is not None else ""


def call_problems(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls whose safety depends on their arguments."""
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = _name(node.func)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if func == "torch.load" or func.endswith(".torch.load"):
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append((node.lineno, "torch.load without weights_only=True"))
        if func in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or not _name(loader).endswith(SAFE_YAML_LOADERS):
                problems.append((node.lineno, f"{func} without a safe Loader (use yaml.safe_load)"))
        if func in ("eval", "exec"):
            problems.append((node.lineno, f"{func}()"))
    return problems


def problems_in(path: Path, label: str) -> list[str]:
    """``label:line: what`` for every refused construct in the Python file ``path``."""
    text = path.read_text(encoding="utf-8")
    found = [(n, what) for n, line in code_lines(text) for what, rx in PATTERNS.items() if rx.search(line)]
    found += call_problems(ast.parse(text, str(path)))
    return [f"{label}:{n}: {what}" for n, what in sorted(found)]


def test_the_scan_sees_every_kind_of_violation(tmp_path):
    """The checker itself: each refused construct is found, and mentions in comments/strings are not."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nfrom dill import loads\nimport yaml, torch, numpy as np\n"
        "a = torch.load('f', weights_only=False)\nb = torch.load('f')\nc = yaml.load(s)\n"
        "d = yaml.load(s, Loader=yaml.FullLoader)\ne = np.load('f', allow_pickle=True)\n"
        "f = m.from_pretrained('x', trust_remote_code=True)\ndef g(trust_remote_code: bool = True): pass\n"
        "h = eval(text)\n"
    )
    found = problems_in(bad, "bad.py")
    for needle in ("pickle", "weights_only=False", "torch.load without", "yaml.load without", "unsafe yaml",
                   "allow_pickle=True", "trust_remote_code=True", "eval()"):
        assert any(needle in f for f in found), (needle, found)
    assert len({f.split(":")[1] for f in found}) == 10  # every line but the plain imports of line 3
    fine = tmp_path / "fine.py"
    fine.write_text(
        '"""We never use pickle or yaml.load; weights_only=False is refused."""\nimport yaml, torch\n'
        "x = yaml.safe_load(s)  # not yaml.load(s)\ny = yaml.load(s, Loader=yaml.SafeLoader)\n"
        "z = torch.load('f', weights_only=True)\nm.from_pretrained('x', trust_remote_code=trust_remote_code)\n"
        "msg = f'no pickle {x}'\n"
    )
    assert problems_in(fine, "fine.py") == []


def test_no_code_execution_from_files_in_src():
    assert FILES, f"no Python files under {SRC}"
    found = [p for path in FILES for p in problems_in(path, str(path.relative_to(SRC.parent)))]
    assert found == [], "refused constructs in src/:\n" + "\n".join(found)
