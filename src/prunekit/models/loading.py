"""Resolve a model name to weights and load it with stock transformers classes (no remote code)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prunekit.assets import EMBEDDED_MODELS, embedded_model_dir
from prunekit.core.families import check_model_type


def resolve_model_path(name_or_path: str | Path) -> str:
    """Return a local folder or hub id for ``name_or_path``; embedded names are converted on first use."""
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        return str(embedded_model_dir(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {name!r} has no config.json")
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path:
        raise FileNotFoundError(f"model path {name!r} does not exist")
    return name  # a hub id such as "HuggingFaceTB/SmolLM2-135M"


def load_model(name_or_path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
               trust_remote_code: bool = False):
    """Load a decoder-only causal LM in eval mode.

    ``name_or_path`` is ``"smollm2-135m"`` (the embedded default), a local folder or a hub id.
    Folders written by prunekit's structured pruning with per-layer widths load too.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    check_model_type(config.model_type)
    manifest = Path(path) / "prunekit.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("layer_shapes"):
        from prunekit.io import load_pretrained

        return load_pretrained(path, dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.to(device).eval()


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
