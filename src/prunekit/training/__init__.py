"""Pruning during training: schedules, criteria, a loop-agnostic pruner, IMP, recovery.

They train with the one loop of :mod:`prunekit.core.train` (the pruner and IMP are its callbacks).

Names are imported lazily; ``PruningCallback`` (Hugging Face ``Trainer``) imports transformers
only when it is first used.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ConstantSparsity": "schedules", "OneShotSparsity": "schedules", "LinearSparsity": "schedules",
    "CubicSparsity": "schedules", "imp_sparsities": "schedules", "make_schedule": "schedules",
    "compute_masks": "criteria", "layerwise_masks": "criteria", "global_masks": "criteria",
    "data_scores": "data_criteria", "collect_stats": "data_criteria",
    "Pruner": "pruner", "prune_once": "pruner", "prunable_weights": "pruner", "default_layers": "pruner",
    "remask": "pruner",
    "IterativeMagnitudePruning": "imp", "run_imp": "imp", "snapshot": "imp", "rewind": "imp",
    "finetune": "recovery", "perp_recover": "recovery", "MaskedLoRA": "recovery",
    "add_masked_lora": "recovery", "merge_lora": "recovery",
    "FixedMasks": "recovery", "CausalLMLoss": "recovery", "label_loss": "recovery", "answer_prompts": "recovery",
    "PruningCallback": "hf_callback",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"prunekit.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'prunekit.training' has no attribute {name!r}")
