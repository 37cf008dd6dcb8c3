"""GBLM-Pruner (Das et al. 2023, "Beyond Size: How Gradients Shape Pruning Decisions in LLMs").

Score S_ij = |W_ij| * (alpha * G_ij + ||X_j||_2), where G_ij = sqrt(sum over calibration samples
of g_ij^2) aggregates the gradient of each sample's mean next-token loss (computed once on the
dense model), alpha = 100 as in the paper, and ||X_j|| is Wanda's activation norm. Per-row by
default, no weight update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.registry import METHODS, option
from prunekit.oneshot.base import Method


@METHODS.register("gblm")
@dataclass
class GBLM(Method):
    """|W| x (alpha ||grad W|| + ||X_j||): gradients and activations (Das et al. 2023)."""

    needs = frozenset({"norms", "gradients"})
    gradient_reduction = "l2"
    default_pattern = "per-row"
    alpha: float = option(100.0, "weight of the gradient term against the activation term", min=0)

    def scores(self, weight, ctx):
        activation_term = ctx.stats.column_norms().unsqueeze(0)
        grad = ctx.gradient.to(device=weight.device, dtype=torch.float32)  # scores in fp32 for any weight dtype
        return weight.float().abs() * (self.alpha * grad + activation_term)
