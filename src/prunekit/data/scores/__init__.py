"""Per-example data-pruning scores, one module each. Every score is oriented higher = harder.

``SCORES`` maps a score name to ``(module, needs)`` where ``needs`` says what the score is
computed from: ``"model"`` (a trained network, averaged over seeds/checkpoints), ``"dynamics"``
(a training-history matrix recorded by :class:`prunekit.data.dynamics.TrainingDynamics`),
``"checkpoints"`` (several checkpoints), ``"embeddings"`` or ``"none"``.
"""

from __future__ import annotations

from prunekit.data.scores._common import HIGHER_IS_HARDER
from prunekit.data.scores.aum import aum_scores, margins_from_logits
from prunekit.data.scores.el2n import el2n_from_logits, el2n_scores
from prunekit.data.scores.forgetting import forgetting_scores
from prunekit.data.scores.geometry import duplicate_mask, kcenter_scores
from prunekit.data.scores.grand import grand_full, grand_last_layer, grand_scores
from prunekit.data.scores.loss import loss_from_logits, loss_scores
from prunekit.data.scores.random_score import random_scores
from prunekit.data.scores.uncertainty import uncertainty_from_logits, uncertainty_scores
from prunekit.data.scores.vog import vog_scores

SCORES: dict[str, str] = {
    "random": "none",
    "loss": "model",
    "el2n": "model",
    "grand": "model",
    "grand_last_layer": "model",
    "forgetting": "dynamics",
    "aum": "dynamics",
    "entropy": "model",
    "margin": "model",
    "least_confidence": "model",
    "vog": "checkpoints",
    "kcenter": "embeddings",
}

__all__ = [
    "HIGHER_IS_HARDER", "SCORES", "aum_scores", "duplicate_mask", "el2n_from_logits", "el2n_scores",
    "forgetting_scores", "grand_full", "grand_last_layer", "grand_scores", "kcenter_scores",
    "loss_from_logits", "loss_scores", "margins_from_logits", "random_scores", "uncertainty_from_logits",
    "uncertainty_scores", "vog_scores",
]
