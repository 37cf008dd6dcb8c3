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
    pruning) are rebuilt from their config, the recorded linears are replaced by modules of the
    recorded shapes, and then the safetensors weights are loaded strictly (tied weights aside).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    shapes = read_manifest(path).get("layer_shapes")
    if not shapes:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    from safetensors.torch import load_file

    from prunekit.structured.export import apply_layer_shapes

    config = AutoConfig.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    apply_layer_shapes(model, shapes)
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{str(path)!r} has no .safetensors weights")
    state = {k: v for f in files for k, v in load_file(str(f)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"weights in {str(path)!r} do not match layer_shapes: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")
    if tied:
        model.tie_weights()
    return model.to(dtype).eval()
