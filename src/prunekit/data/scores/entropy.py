"""Predictive entropy ``-sum_j p_j log p_j``: a label-free uncertainty score (Coleman et al.,
"Selection via Proxy", ICLR 2020). Higher = harder (the model is less sure)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prunekit.core.registry import SCORES
from prunekit.data.scores.base import Score


def entropy_from_logits(logits: torch.Tensor) -> np.ndarray:
    probs = logits.float().softmax(dim=1)
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=1).numpy()


@SCORES.register("entropy")
@dataclass
class Entropy(Score):
    """Entropy of the predicted class distribution (label-free; Coleman et al. 2020)."""

    flags = "ambiguous"
    needs = frozenset({"model"})

    def compute(self, ctx):
        return entropy_from_logits(ctx.logits)
