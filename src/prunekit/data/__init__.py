"""Data pruning: score every training example, select a subset, train on it (optionally with KD).

The pieces compose as ``scores -> ScoreTable -> recipe of selectors -> Selection -> training``:

* :mod:`prunekit.data.scores` -- one module per score; every score is oriented so that
  **higher = harder** (more informative / more likely mislabeled), whatever the paper's sign.
* :mod:`prunekit.data.table` -- the long-format score table keyed by a stable example id
  (dataset index + content hash), saved as Parquet or NPZ with a JSON manifest.
* :mod:`prunekit.data.select` -- hardest / easiest / middle band / CCS / random selectors,
  class-balanced with exact quotas, composed in a recipe.
* :mod:`prunekit.data.train` -- a small in-memory trainer with optional knowledge distillation.
* :mod:`prunekit.data.text` -- per-document causal-LM loss/perplexity for text corpora.

Names are imported lazily so that ``import prunekit.data`` stays cheap.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ScoreTable": "prunekit.data.table",
    "stability_report": "prunekit.data.table",
    "example_ids": "prunekit.data.ids",
    "Selection": "prunekit.data.select",
    "select": "prunekit.data.select",
    "apply_recipe": "prunekit.data.select",
    "Budget": "prunekit.data.train",
    "fit": "prunekit.data.train",
    "kd_defaults": "prunekit.data.train",
    "TrainingDynamics": "prunekit.data.dynamics",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunekit.data' has no attribute {name!r}")
