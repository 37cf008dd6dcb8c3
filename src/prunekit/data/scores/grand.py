"""GraNd: the gradient-norm score of Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet" (2021).

``GraNd(x, y) = E_w || grad_w L(f_w(x), y) ||_2``  (their Eq. 1), averaged over seeds, computed at
initialization or early in training. Higher = harder.

This is the exact per-example gradient over *all* parameters, with ``torch.func.vmap(grad(...))``.
:mod:`prunekit.data.scores.grand_last_layer` is the one-forward-pass closed form for the classifier
head alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from prunekit.core.errors import PrunekitError
from prunekit.core.registry import SCORES, option
from prunekit.data.scores._common import average_over
from prunekit.data.scores.base import Score
from prunekit.data.scores.grand_last_layer import grand_last_layer

MODES = ("full", "last_layer")


def grand_full(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Exact per-example gradient norm over every trainable parameter."""
    was_training = model.training
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def example_loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_example_grad = vmap(grad(example_loss), in_dims=(None, 0, 0))
    norms = []
    for i in range(0, len(x), batch_size):
        grads = per_example_grad(params, x[i : i + batch_size], y[i : i + batch_size].long())
        sq = sum(g.flatten(1).pow(2).sum(dim=1) for g in grads.values())
        norms.append(sq.sqrt())
    model.train(was_training)
    return torch.cat(norms).numpy()


def grand_scores(
    models: nn.Module | Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    mode: str = "full",
    batch_size: int = 128,
) -> np.ndarray:
    """GraNd averaged over ``models`` (one per seed and/or checkpoint); ``mode`` is one of :data:`MODES`."""
    if mode not in MODES:
        raise PrunekitError(f"GraNd mode {mode!r} is not one of {', '.join(MODES)}")
    fn = grand_full if mode == "full" else grand_last_layer
    models = [models] if isinstance(models, nn.Module) else list(models)
    return average_over(models, lambda m: fn(m, x, y, batch_size))


@SCORES.register("grand")
@dataclass
class GraNd(Score):
    """Per-example gradient norm over all parameters, early in training (Paul et al. 2021)."""

    flags = "mislabelled"
    needs = frozenset({"model", "labels"})
    batch_size: int = option(128, "examples per vmap batch (memory: one gradient per example)", min=1)

    def compute(self, ctx):
        return grand_full(ctx.model, ctx.x, ctx.y, self.batch_size)
