"""GraNd of the classifier head alone, in closed form (Paul, Ganguli & Dziugaite 2021, Eq. 1).

For the head ``z = W h + b`` the per-example gradient of the cross-entropy is ``(p - y) h^T`` for
``W`` and ``(p - y)`` for ``b``, so its norm is ``||p - y||_2 * sqrt(||h||_2^2 + 1)``: one forward
pass, no backward. It needs the penultimate features (``model.embed``). Higher = harder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core.registry import SCORES
from prunekit.data.scores._common import batched_logits_and_embeddings
from prunekit.data.scores.base import Score


def grand_from_head(logits: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``||softmax(logits) - onehot(labels)|| * sqrt(||h||^2 + 1)`` per row."""
    err = logits.softmax(dim=1) - F.one_hot(labels.long(), logits.shape[1]).float()
    return (err.norm(dim=1) * (embeddings.pow(2).sum(dim=1) + 1).sqrt()).numpy()


def grand_last_layer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Closed-form gradient norm of the classifier head of ``model`` on ``(x, y)``."""
    logits, h = batched_logits_and_embeddings(model, x, batch_size)
    return grand_from_head(logits, h, y)


@SCORES.register("grand_last_layer")
@dataclass
class GraNdLastLayer(Score):
    """GraNd of the classifier head only: ||p - y|| * sqrt(||h||^2 + 1), one forward pass."""

    flags = "mislabelled"
    needs = frozenset({"model", "labels"})

    def compute(self, ctx):
        return grand_from_head(ctx.logits, ctx.embeddings, ctx.y)
