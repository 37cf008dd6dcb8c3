"""Structured pruning: physically remove MLP channels, attention heads (whole GQA groups), blocks and
CNN filters, so the model gets smaller and faster. Names are imported lazily."""

from __future__ import annotations

import importlib

_LAZY = {
    "prune_structured": "prunekit.structured.prune",
    "StructuredResult": "prunekit.structured.prune",
    "find_groups": "prunekit.structured.graph",
    "layer_shapes": "prunekit.core.shapes",
    "apply_layer_shapes": "prunekit.core.shapes",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunekit.structured' has no attribute {name!r}")
