"""Per-example cross-entropy loss ``-log p_y(x)``: higher loss = harder example."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.data.scores._common import batched_logits

NAME = "loss"
DIRECTION = "higher=harder"


def loss_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    return F.cross_entropy(logits.float(), labels.long(), reduction="none").numpy()


def loss_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Cross-entropy of each example under ``model``."""
    return loss_from_logits(batched_logits(model, x, batch_size), y)
