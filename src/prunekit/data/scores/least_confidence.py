"""Least confidence ``1 - max_j p_j`` (Coleman et al., "Selection via Proxy", ICLR 2020).
Label-free; higher = harder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prunekit.core.registry import SCORES
from prunekit.data.scores.base import Score


def least_confidence_from_logits(logits: torch.Tensor) -> np.ndarray:
    return (1 - logits.float().softmax(dim=1).max(dim=1).values).numpy()


@SCORES.register("least_confidence")
@dataclass
class LeastConfidence(Score):
    """One minus the probability of the most likely class (label-free; Coleman et al. 2020)."""

    flags = "ambiguous"
    needs = frozenset({"model"})

    def compute(self, ctx):
        return least_confidence_from_logits(ctx.logits)
