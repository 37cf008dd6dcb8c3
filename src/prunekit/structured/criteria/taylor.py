"""First-order Taylor importance of a group (LLM-Pruner, Ma et al. 2023, eq. 3-4, element-wise).

Removing weight w_k changes the calibration loss by about -g_k w_k, g_k = dL/dw_k. The group
score sums the element estimates over everything the unit owns:

    score(u) = sum_{k in u} | w_k * g_k |

with g the gradient of the mean next-token loss averaged over the calibration windows
(:func:`prunekit.core.stats.collect_gradients` with reduction "mean", weights and biases).
Scores estimate a loss change, so they are comparable across layers (no standardization).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.registry import CRITERIA
from prunekit.structured.criteria.base import Criterion, ScoreContext
from prunekit.structured.graph import Group


@CRITERIA.register("taylor")
@dataclass
class Taylor(Criterion):
    """First-order Taylor (LLM-Pruner): sum of |weight x gradient| over what a unit owns."""

    needs = frozenset({"gradients"})

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        if group.kind == "blocks":
            return super().score(group, ctx)

        def value(name, weight, bias):
            g_w, g_b = ctx.stats.gradients[name]
            return (weight * g_w).abs(), (bias * g_b).abs() if bias is not None and g_b is not None else None

        return group.unit_sums(value)
