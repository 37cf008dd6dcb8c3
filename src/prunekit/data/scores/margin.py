"""Margin uncertainty ``1 - (p_(1) - p_(2))``: one minus the gap between the two most likely classes
(Coleman et al., "Selection via Proxy", ICLR 2020). Label-free; higher = harder.

Not to be confused with AUM's margin ``z_y - max_{j != y} z_j``, which reads the label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prunekit.core.registry import SCORES
from prunekit.data.scores.base import Score


def top2_margin_from_logits(logits: torch.Tensor) -> np.ndarray:
    top2 = logits.float().softmax(dim=1).topk(2, dim=1).values
    return (1 - (top2[:, 0] - top2[:, 1])).numpy()


@SCORES.register("margin")
@dataclass
class Margin(Score):
    """One minus the gap between the two most likely classes (label-free; Coleman et al. 2020)."""

    flags = "ambiguous"
    needs = frozenset({"model"})

    def compute(self, ctx):
        return top2_margin_from_logits(ctx.logits)
