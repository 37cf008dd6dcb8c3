"""Per-example cross-entropy loss ``-log p_y(x)``: higher loss = harder example."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core.registry import SCORES
from prunekit.data.scores._common import batched_logits
from prunekit.data.scores.base import Score


def loss_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    return F.cross_entropy(logits.float(), labels.long(), reduction="none").numpy()


def loss_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Cross-entropy of each example under ``model``."""
    return loss_from_logits(batched_logits(model, x, batch_size), y)


@SCORES.register("loss")
@dataclass
class Loss(Score):
    """Cross-entropy -log p_y(x) of the model trained so far."""

    flags = "mislabelled"
    needs = frozenset({"model", "labels"})

    def compute(self, ctx):
        return loss_from_logits(ctx.logits, ctx.y)
