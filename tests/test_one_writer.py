"""One writer (issue 18): no module outside ``core/io.py`` moves a file into place or writes an output by hand.

A grep-level check (the AST of every Python file under ``src/``), run in CI:

- **Moving and temporary files are core.io's alone.** ``os.rename``/``os.replace``/``os.link``,
  ``shutil.move``/``rmtree``/``copy*``, ``Path.rename``/``replace``/``symlink_to``/``hardlink_to`` and
  ``tempfile``'s ``mkdtemp``/``mkstemp``/``NamedTemporaryFile``/``TemporaryDirectory`` appear nowhere else.
- **Every write happens in a folder or file the writer gave.** A call that creates or writes a path
  (``open`` in a writing mode, ``write_text``/``write_bytes``/``mkdir``/``touch``/``unlink`` on a path,
  ``np.save*``, ``torch.save``, ``save_file``, ``json.dump``, ``savefig``, a model's or config's
  ``save_pretrained``) sits lexically inside ``with atomic_output(...)``, ``atomic_file``,
  ``replace_file``, ``scratch_folder`` or ``cache_entry``, or inside one of the few *staging writers*
  listed below: functions that write only into the path they are handed. Each staging writer is in
  turn called only from inside such a ``with`` block or from another staging writer, so every path
  they write was made by core.io.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "prunekit"
CORE_IO = SRC / "core" / "io.py"
WRITERS = {"atomic_output", "atomic_file", "replace_file", "scratch_folder", "cache_entry"}
# (module, function): what it writes into, given by the caller
STAGING = {
    ("core/checkpoint.py", "save_state"): "a file inside replace_file / atomic_file",
    ("core/shards.py", "write"): "a shard inside atomic_output's staging folder",
    ("data/select.py", "write"): "the staging file of atomic_file (Selection.save)",
    ("delta/lora.py", "write_adapter_files"): "atomic_output's staging folder",
    ("evaluate/report.py", "plot_layers"): "the report's staging folder",
    ("evaluate/report.py", "plot_quality"): "the report's staging folder",
    ("evaluate/report.py", "plot_speed"): "the report's staging folder",
    ("oneshot/prune.py", "_save_config"): "the streamed prune's staging folder",
    ("assets.py", "join_chunks"): "a scratch_folder of the conversion",
    ("evaluate/lmeval.py", "export_tasks"): "a scratch_folder for lm-eval's task files",
}
# functions that write only inside a run folder open_run (core.io's claim of run.json) returned to them
RUN_FOLDER_WRITERS = {("data/pipeline.py", "score_classifier")}

MOVING = {"os.rename", "os.replace", "os.link", "os.symlink", "shutil.move", "shutil.rmtree", "shutil.copy",
          "shutil.copy2", "shutil.copyfile", "shutil.copytree", "tempfile.mkdtemp", "tempfile.mkstemp",
          "tempfile.NamedTemporaryFile", "tempfile.TemporaryDirectory", "mkdtemp", "mkstemp"}
MOVING_METHODS = {"rename", "symlink_to", "hardlink_to"}
WRITING = {"np.save", "np.savez", "np.savez_compressed", "numpy.save", "numpy.savez", "torch.save", "save_file",
           "json.dump", "os.makedirs", "os.mkdir", "os.remove", "os.unlink", "os.rmdir"}
WRITING_METHODS = {"write_text", "write_bytes", "mkdir", "touch", "unlink", "rmdir", "savefig"}
IO_FUNCTIONS = {"save_pretrained", "write_text", "write_json", "write_manifest"}  # core.io's own, by bare name


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        if path != CORE_IO:
            yield path.relative_to(SRC).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def _writes_mode(call: ast.Call) -> bool:
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None:
        return False
    if not isinstance(mode, ast.Constant) or not isinstance(mode.value, str):
        return True  # a mode computed at run time: treat as writing
    return any(c in mode.value for c in "wax+")


def _kind(call: ast.Call) -> str | None:
    """'moving', 'writing' or None for one call."""
    name = ast.unparse(call.func)
    method = call.func.attr if isinstance(call.func, ast.Attribute) else None
    if name in MOVING or method in MOVING_METHODS:
        return "moving"
    if method == "replace" and len(call.args) == 1 and not call.keywords and name != "dataclasses.replace":
        return "moving"  # Path.replace(target) (str.replace takes two arguments)
    if name == "open":
        first = ast.unparse(call.args[0]) if call.args else ""
        return "writing" if _writes_mode(call) and first != "os.devnull" else None
    if name in WRITING or (method in WRITING_METHODS and name not in IO_FUNCTIONS):
        return "writing"
    if method == "save_pretrained":  # a transformers object's own save; core.io.save_pretrained is a bare name
        return "writing"
    return None


def _walk(tree: ast.AST):
    """(call, enclosing function name, whether inside a writer's with-block) for every call."""
    def visit(node, function, guarded):
        for child in ast.iter_child_nodes(node):
            inner_function, inner_guarded = function, guarded
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner_function, inner_guarded = child.name, False
            if isinstance(child, (ast.With, ast.AsyncWith)) and any(
                    isinstance(item.context_expr, ast.Call)
                    and ast.unparse(item.context_expr.func).rsplit(".", 1)[-1] in WRITERS for item in child.items):
                inner_guarded = True
            if isinstance(child, ast.Call):
                yield child, function, guarded
            yield from visit(child, inner_function, inner_guarded)
    yield from visit(tree, "<module>", False)


def test_nothing_outside_core_io_moves_files_or_makes_temporaries():
    found = [f"{module}:{call.lineno}: {ast.unparse(call.func)}" for module, tree in _modules()
             for call, _, _ in _walk(tree) if _kind(call) == "moving"]
    assert not found, "only prunekit.core.io may rename, link, copy or make temporary files:\n" + "\n".join(found)


def test_every_write_is_inside_a_writer_block_or_a_staging_writer():
    found = []
    for module, tree in _modules():
        for call, function, guarded in _walk(tree):
            allowed = guarded or (module, function) in STAGING or (module, function) in RUN_FOLDER_WRITERS
            if _kind(call) == "writing" and not allowed:
                found.append(f"{module}:{call.lineno}: {function}: {ast.unparse(call.func)}")
    assert not found, ("writes outside core.io's writer (use atomic_output / atomic_file / replace_file / "
                       "scratch_folder / cache_entry):\n" + "\n".join(found))


def test_staging_writers_are_called_only_where_the_writer_gave_the_path():
    names = {function for _, function in STAGING}
    found = []
    for module, tree in _modules():
        for call, function, guarded in _walk(tree):
            called = call.func.attr if isinstance(call.func, ast.Attribute) else ast.unparse(call.func)
            if called not in names or called == "write" and not isinstance(call.func, ast.Attribute):
                continue
            if called == "write" and ast.unparse(call.func.value) not in ("selection", "self", "shards", "writer"):
                continue  # file.write(...) of an open file, not a staging writer
            if not (guarded or (module, function) in STAGING):
                found.append(f"{module}:{call.lineno}: {function} calls {called}")
    assert not found, "staging writers called outside a writer block:\n" + "\n".join(found)


def test_run_folder_writers_write_into_the_folder_open_run_claimed():
    trees = dict(_modules())
    for module, function in RUN_FOLDER_WRITERS:
        body = next(n for n in ast.walk(trees[module]) if isinstance(n, ast.FunctionDef) and n.name == function)
        assert any(isinstance(c, ast.Call) and ast.unparse(c.func).endswith("open_run") for c in ast.walk(body))


def test_the_check_catches_a_hand_written_rename_and_write(tmp_path):
    """The checks are not vacuous: the classic hand-written sequence is found."""
    tree = ast.parse("import os\ndef save(path, data):\n    tmp = path.with_suffix('.tmp')\n"
                     "    with open(tmp, 'wb') as f:\n        f.write(data)\n    os.replace(tmp, path)\n"
                     "def ok(out):\n    with atomic_file(out, None, False) as tmp:\n        tmp.write_bytes(b'')\n")
    kinds = [(function, _kind(call), guarded) for call, function, guarded in _walk(tree) if _kind(call)]
    assert kinds == [("save", "writing", False), ("save", "moving", False), ("ok", "writing", True)]
