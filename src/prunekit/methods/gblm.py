"""GBLM-Pruner (Das et al. 2023, "Beyond Size: How Gradients Shape Pruning Decisions in LLMs").

Score S_ij = |W_ij| * (alpha * G_ij + ||X_j||_2), where G_ij = sqrt(sum over calibration samples
of g_ij^2) aggregates the gradient of each sample's mean next-token loss (computed once on the
dense model), alpha = 100 as in the paper, and ||X_j|| is Wanda's activation norm. Per-row by
default, no weight update.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.masks import mask_from_scores
from prunekit.methods.base import Method
from prunekit.registry import register


@register
@dataclass
class GBLM(Method):
    name = "gblm"
    needs = frozenset({"norms", "gradients"})
    default_pattern = "per-row"
    alpha: float = 100.0  # weight of the gradient term against the activation term

    def prune_layer(self, weight, sparsity, pattern, ctx):
        activation_term = ctx.stats.column_norms().unsqueeze(0)
        grad = ctx.grad_norms.to(device=weight.device, dtype=weight.dtype)
        scores = weight.abs() * (self.alpha * grad + activation_term)
        return mask_from_scores(scores, sparsity, pattern)
