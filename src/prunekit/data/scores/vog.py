"""VoG: variance of gradients, Agarwal, D'souza & Hooker, "Estimating Example Difficulty using
Variance of Gradients" (CVPR 2022).

For checkpoints ``t = 1..K`` take the gradient of the true-class logit w.r.t. the input,
``S_t = d z_y / d x``. Per pixel, ``VoG_p = (1/K) sum_t (S_t,p - mean_t S_t,p)^2`` and the example
score is the mean over pixels (their Eq. 2-3). The paper then normalizes within each class
(``(v - mean_c) / std_c``), which ``class_normalize=True`` does. Higher = harder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.registry import SCORES, option
from prunekit.data.scores.base import Score


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``d z_y / d x`` for every example (same shape as ``x``)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].clone().requires_grad_(True)
        logits = model(xb)
        picked = logits.gather(1, y[i : i + batch_size].long().view(-1, 1)).sum()
        (g,) = torch.autograd.grad(picked, xb)
        out.append(g.detach())
    model.train(was_training)
    return torch.cat(out)


def vog_scores(
    checkpoints: Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    class_normalize: bool = True,
    batch_size: int = 256,
) -> np.ndarray:
    """VoG over ``checkpoints`` (at least two models from one or more training runs)."""
    if len(checkpoints) < 2:
        raise PrunekitError("VoG needs at least two checkpoints")
    mean = torch.zeros_like(x)
    sq = torch.zeros_like(x)
    for model in checkpoints:  # running first/second moments, one checkpoint in memory at a time
        g = input_gradients(model, x, y, batch_size)
        mean += g
        sq += g * g
    k = len(checkpoints)
    var = (sq / k - (mean / k) ** 2).clamp_min(0)
    scores = var.flatten(1).mean(dim=1).double().numpy()
    if class_normalize:
        labels = y.numpy()
        for c in np.unique(labels):
            m = labels == c
            std = scores[m].std()
            scores[m] = (scores[m] - scores[m].mean()) / (std if std > 0 else 1.0)
    return scores


@SCORES.register("vog")
@dataclass
class VoG(Score):
    """Variance over checkpoints of the input gradient of the label's logit (Agarwal et al. 2022)."""

    flags = "unstable"
    needs = frozenset({"checkpoints", "labels"})
    class_normalize: bool = option(True, "standardize the scores within each class, as the paper does")

    def compute(self, ctx):
        return vog_scores(ctx.checkpoints, ctx.x, ctx.y, class_normalize=self.class_normalize)
