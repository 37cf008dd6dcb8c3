"""Saving and loading pruned models: a ``save_pretrained`` folder (safetensors) + ``prunekit.json``.

Outputs are written atomically: everything goes to a temporary folder beside the target, which is
renamed into place only when complete. The input model folder is never overwritten, and an
existing output is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from prunekit import __version__

MANIFEST = "prunekit.json"


class OutputExistsError(FileExistsError):
    pass


def check_output(out: str | Path, overwrite: bool = False, inputs: tuple = ()) -> Path:
    """Validate an output folder before any work is done (never the input, never silently replaced)."""
    out = Path(out).expanduser().resolve()
    for source in inputs:
        if source and Path(str(source)).expanduser().exists() and Path(str(source)).expanduser().resolve() == out:
            raise OutputExistsError(f"--out {str(out)!r} is the input model folder; choose another folder")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"--out {str(out)!r} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {str(out)!r} exists and is not a folder")
    return out


def save_pretrained(model, out: str | Path, tokenizer=None, manifest: dict | None = None,
                    overwrite: bool = False, source: str | None = None) -> Path:
    """Write ``model`` (and tokenizer) to ``out`` atomically with a ``prunekit.json`` manifest."""
    out = check_output(out, overwrite, inputs=(source,))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        data = {"prunekit_version": __version__, "source_model": source, **(manifest or {})}
        (tmp / MANIFEST).write_text(json.dumps(data, indent=2, default=str))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_manifest(path: str | Path) -> dict:
    file = Path(path) / MANIFEST
    return json.loads(file.read_text()) if file.is_file() else {}


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a folder written by prunekit with the stock transformers classes (no remote code).

    Folders with per-layer widths (``"layer_shapes"`` in ``prunekit.json``, written by structured
    pruning) load in three steps: ``from_pretrained`` loads everything whose shape the config
    describes (with transformers' own key renames and weight tying); the recorded linears are
    replaced by modules of the recorded shapes; their weights and biases are copied from the
    safetensors files, and a missing one is an error.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    shapes = read_manifest(path).get("layer_shapes")
    if not shapes:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    from safetensors import safe_open

    from prunekit.structured.export import apply_layer_shapes

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the mismatched blocks are expected: they are rebuilt below
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, ignore_mismatched_sizes=True)
    finally:
        logging.set_verbosity(verbosity)
    apply_layer_shapes(model, shapes)
    files = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            files.update({key: file for key in f.keys()})
    with torch.no_grad():
        for name in shapes.get("linears", {}):
            module = model.get_submodule(name)
            for kind in ("weight", "bias"):
                param = getattr(module, kind)
                key = f"{name}.{kind}"
                if param is None:
                    continue
                if key not in files:
                    raise RuntimeError(f"{str(path)!r} has no tensor {key!r} although layer_shapes lists {name!r}")
                with safe_open(str(files[key]), framework="pt") as f:
                    param.copy_(f.get_tensor(key))
    return model.to(dtype).eval()
