"""FLAP's fluctuation metric (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for
Large Language Models", AAAI; eq. 4-6).

For input channel j of a group consumer (o_proj / down_proj) with weight W (out x in):

    S_j = Var_tokens(X_j) * ||W[:, j]||_2^2                      (fluctuation metric, eq. 4)

A channel whose input barely fluctuates around its mean can be replaced by that mean, which is
folded into the output bias when it is removed (bias compensation, eq. 6):

    b' = b + W[:, removed] @ mean(X[removed])

Unit scores are channel sums (a head = its head_dim channels; a GQA unit = all its query heads).
Scores are standardized per layer and structure, (S - mean) / std, and ranked across all layers
and both structures at once: the adaptive global structure ("AL-AM").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.families import weight_view
from prunekit.core.registry import CRITERIA
from prunekit.structured.criteria.base import Criterion, ScoreContext, consumer_channel_sum
from prunekit.structured.graph import Group


@CRITERIA.register("flap")
@dataclass
class Flap(Criterion):
    """FLAP: input fluctuation x squared weight column, adaptive global structure, bias compensation."""

    needs = frozenset({"moments"})
    standardize = True
    allocation = "global"
    bias_compensation = True

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        if group.kind == "blocks":
            return super().score(group, ctx)
        name, module, _ = group.consumer
        variance = ctx.stats.layers[name].variance
        column_sq = weight_view(module).double().pow(2).sum(dim=0)
        return consumer_channel_sum(group, variance * column_sq)
