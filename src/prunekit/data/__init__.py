"""Data pruning: score every training example, select a subset, train on it (optionally with KD).

The pieces compose as ``scores -> ScoreTable -> selection steps -> Selection -> training``:

* :mod:`prunekit.data.scores` -- one module per score, each an entry of
  :data:`prunekit.core.registry.SCORES` carrying its direction and what it needs; every score is
  oriented so that **higher = harder** (more informative / more likely mislabeled).
* :mod:`prunekit.data.table` -- the long-format score table keyed by a stable example id
  (dataset index + content hash), saved as Parquet or NPZ with a JSON manifest.
* :mod:`prunekit.data.select` -- hardest / easiest / middle band / CCS / random selectors (entries of
  :data:`~prunekit.core.registry.SELECTORS`), class-balanced with exact quotas, composed as
  ``selection`` recipe steps.
* :mod:`prunekit.data.train` -- a small in-memory trainer with optional knowledge distillation.
* :mod:`prunekit.data.text` -- per-document causal-LM scores for text corpora.

Importing the package registers the ``selection`` recipe step (numpy only); the other names are
imported lazily so that ``import prunekit.data`` stays cheap.
"""

from __future__ import annotations

import importlib

from prunekit.data import select  # noqa: F401 - registers the selectors and the "selection" recipe step

_LAZY = {
    "ScoreTable": "prunekit.data.table",
    "stability_report": "prunekit.data.table",
    "example_ids": "prunekit.data.ids",
    "Selection": "prunekit.data.select",
    "SelectionStep": "prunekit.data.select",
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
