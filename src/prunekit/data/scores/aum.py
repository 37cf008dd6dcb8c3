"""AUM: the area under the margin of Pleiss et al., "Identifying Mislabeled Data using the Area
Under the Margin Ranking" (NeurIPS 2020).

Margin at epoch ``t``: ``M_t(x, y) = z_y - max_{j != y} z_j`` (their Eq. 1, on logits), and
``AUM = (1/T) sum_t M_t`` (Eq. 2). Low (negative) AUM flags mislabeled / hard examples, so the
stored score is ``-AUM``: higher = harder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prunekit.core.registry import SCORES
from prunekit.data.scores.base import Score


def margins_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``z_y - max_{j != y} z_j`` per row."""
    logits = logits.float()
    assigned = logits.gather(1, labels.long().view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.long().view(-1, 1), float("-inf"))
    return (assigned - others.max(dim=1).values).numpy()


def aum_scores(margins: np.ndarray) -> np.ndarray:
    """``-mean_t M_t`` from a ``(T, N)`` margin history (NaN where an example was not seen)."""
    m = np.asarray(margins, dtype=np.float64)
    seen = ~np.isnan(m)
    count = seen.sum(axis=0)
    total = np.where(seen, m, 0.0).sum(axis=0)
    return np.where(count > 0, -total / np.maximum(count, 1), np.nan)  # NaN: never presented


@SCORES.register("aum")
@dataclass
class AUM(Score):
    """Negated area under the margin z_y - max_{j!=y} z_j over training (Pleiss et al. 2020)."""

    direction = "higher=harder (stored as -AUM)"
    flags = "mislabelled"
    needs = frozenset({"dynamics", "labels"})

    def compute(self, ctx):
        return ctx.dynamics.aum()
