"""Per-example data-pruning scores, one module each; importing this package registers every one in
:data:`prunekit.core.registry.SCORES`. Every score is oriented higher = harder.

Each entry is a config dataclass (:class:`~prunekit.data.scores.base.Score`) carrying its
``direction`` and its ``needs`` (a trained model, training dynamics, checkpoints, embeddings, a
language model, labels); :func:`prunekit.data.pipeline.score_classifier` reads them to decide what to
compute and when. Adding a score is one file here: every module of this package that does not
start with ``_`` is imported (and so registered) when the package is.
"""

from __future__ import annotations

import importlib
import pkgutil

from prunekit.data.scores._common import HIGHER_IS_HARDER
from prunekit.data.scores.aum import aum_scores, margins_from_logits
from prunekit.data.scores.base import NEEDS, Score, ScoreContext
from prunekit.data.scores.el2n import el2n_from_logits, el2n_scores
from prunekit.data.scores.entropy import entropy_from_logits
from prunekit.data.scores.forgetting import forgetting_scores
from prunekit.data.scores.grand import grand_full, grand_scores
from prunekit.data.scores.grand_last_layer import grand_last_layer
from prunekit.data.scores.kcenter import duplicate_mask, kcenter_scores
from prunekit.data.scores.least_confidence import least_confidence_from_logits
from prunekit.data.scores.loss import loss_from_logits, loss_scores
from prunekit.data.scores.margin import top2_margin_from_logits
from prunekit.data.scores.random_score import random_scores
from prunekit.data.scores.vog import vog_scores

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "HIGHER_IS_HARDER", "NEEDS", "Score", "ScoreContext", "aum_scores", "duplicate_mask", "el2n_from_logits",
    "el2n_scores", "entropy_from_logits", "forgetting_scores", "grand_full", "grand_last_layer", "grand_scores",
    "kcenter_scores", "least_confidence_from_logits", "loss_from_logits", "loss_scores", "margins_from_logits",
    "random_scores", "top2_margin_from_logits", "vog_scores",
]
