"""CFSP-style coarse-to-fine activation importance (after Wang et al. 2024, "CFSP: An Efficient
Structured Pruning Framework for LLMs with Coarse-to-Fine Activation Information").

Coarse: each block gets its own share of the parameter budget from its importance on calibration
data, the angular change it makes to the hidden state, I_i = 1 - cos(x_in, x_out); less important
blocks give more: r_i = R * exp(-beta * z_i) / mean_params(exp(-beta * z)), z the standardized I
(clipped to ``max_ratio``; see :func:`block_ratios`). This exponential rule is our choice.

Fine: within a block, the importance of consumer input channel j combines its activation size with
the *relative* size of its weights in each output row (relative importance, as in RIA):

    s_j = ||X_j||_rms * sum_i |W_ij| / sum_k |W_ik|

Unit scores sum their channels; units of a block are compared by z-scores per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.families import weight_view
from prunekit.core.registry import CRITERIA, option
from prunekit.core.stats import ModelStats
from prunekit.structured.criteria.base import Criterion, ScoreContext, consumer_channel_sum
from prunekit.structured.graph import Group


@CRITERIA.register("cfsp")
@dataclass
class Cfsp(Criterion):
    """CFSP: per-block budgets from block importance, channels by activation x relative weight."""

    needs = frozenset({"moments", "similarity"})
    standardize = True
    allocation = "blocks"
    beta: float = option(0.5, "how strongly less important blocks give more (0: the same ratio everywhere)", min=0)
    max_ratio: float = option(0.9, "no block loses more than this fraction of its units' parameters", above=0, max=1)

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        if group.kind == "blocks":
            return super().score(group, ctx)
        name, module, _ = group.consumer
        w = weight_view(module).double().abs()
        relative = (w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)).sum(dim=0)
        rms = ctx.stats.layers[name].mean_square.sqrt()
        return consumer_channel_sum(group, rms * relative)

    def block_ratios(self, stats: ModelStats, ratio: float, costs: list[float]) -> list[float]:
        """Per-block removal ratios whose parameter-weighted mean is ``ratio``."""
        importance = 1.0 - torch.tensor(stats.block_similarity, dtype=torch.float64)
        z = (importance - importance.mean()) / importance.std().clamp_min(1e-12)
        weight = torch.exp(-self.beta * z)
        cost = torch.tensor(costs, dtype=torch.float64)
        r = torch.zeros_like(weight)
        free = torch.ones_like(weight, dtype=torch.bool)
        for _ in range(len(weight)):  # water-filling: clip at max_ratio, spread the rest
            left = ratio * cost.sum() - (r[~free] * cost[~free]).sum()
            r[free] = weight[free] * left / (weight[free] * cost[free]).sum()
            over = free & (r > self.max_ratio)
            if not over.any():
                break
            r[over] = self.max_ratio
            free &= ~over
        return r.tolist()
