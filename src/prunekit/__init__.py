"""prunekit: make neural networks and their training data smaller.

Public names are imported lazily so that ``import prunekit`` stays cheap and has no side effects.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_model": "prunekit.models",
    "load_tokenizer": "prunekit.models",
    "load_pretrained": "prunekit.core.io",
    "save_pretrained": "prunekit.core.io",
    "apply": "prunekit.api",
    "save": "prunekit.api",
    "Result": "prunekit.api",
    "prune": "prunekit.api",
    "prune_pretrained": "prunekit.api",
    "PruneResult": "prunekit.oneshot.prune",
    "Recipe": "prunekit.core.recipe",
    "CalibrationConfig": "prunekit.core.recipe",
    "PruneStep": "prunekit.oneshot.step",
    "StructuredStep": "prunekit.structured.recipe",
    "prune_vocab": "prunekit.vocab.prune",
    "keep_set": "prunekit.vocab.prune",
    "VocabStep": "prunekit.vocab.step",
    "prune_delta": "prunekit.delta.prune",
    "DeltaStep": "prunekit.delta.step",
    "load_recipe": "prunekit.core.recipe",
    "PrunekitError": "prunekit.core.errors",
    "perplexity": "prunekit.evaluate.perplexity",
    "sparsity_report": "prunekit.evaluate.sparsity",
    "remask": "prunekit.training.pruner",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
