"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs").

Score S_ij = |W_ij| * ||X_j||_2 (Eq. 1): a weight matters when it is large *and* its input
channel carries large activations. Compared within each output row by default (Sec. 3), no
weight update.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.masks import mask_from_scores
from prunekit.methods.base import Method
from prunekit.registry import register


def wanda_scores(weight, stats):
    return weight.abs() * stats.column_norms().unsqueeze(0)


@register
@dataclass
class Wanda(Method):
    name = "wanda"
    needs = frozenset({"norms"})
    default_pattern = "per-row"

    def prune_layer(self, weight, sparsity, pattern, ctx):
        return mask_from_scores(wanda_scores(weight, ctx.stats), sparsity, pattern)
