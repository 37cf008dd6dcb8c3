"""EL2N: the error L2 norm of Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet" (2021).

``EL2N(x, y) = E_w || softmax(f_w(x)) - onehot(y) ||_2``  (their Eq. 2), the expectation taken over
several independent training runs (seeds), each scored early in training (the paper uses ~10% of
training). Higher = harder; mislabeled examples have the largest values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core.registry import SCORES
from prunekit.data.scores._common import average_over, batched_logits
from prunekit.data.scores.base import Score


def el2n_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``|| softmax(logits) - onehot(labels) ||_2`` per row."""
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(labels.long(), probs.shape[1]).float()
    return (probs - onehot).norm(dim=1).numpy()


def el2n_scores(
    models: nn.Module | Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, batch_size: int = 500
) -> np.ndarray:
    """EL2N averaged over ``models`` (one per seed and/or checkpoint)."""
    models = [models] if isinstance(models, nn.Module) else list(models)
    return average_over(models, lambda m: el2n_from_logits(batched_logits(m, x, batch_size), y))


@SCORES.register("el2n")
@dataclass
class EL2N(Score):
    """Error L2 norm ||softmax(f(x)) - onehot(y)|| early in training (Paul et al. 2021)."""

    flags = "mislabelled"
    needs = frozenset({"model", "labels"})

    def compute(self, ctx):
        return el2n_from_logits(ctx.logits, ctx.y)
