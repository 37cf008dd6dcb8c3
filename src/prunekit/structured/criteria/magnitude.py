"""Group magnitude: the L1 or L2 norm of all weights a unit owns (Li et al. 2017, "Pruning Filters
for Efficient ConvNets", eq. 1 with p=1; the L2 variant as in Torch-Pruning's GroupNormImportance).

score(u) = (sum over the unit's producer rows, producer bias entries and consumer columns of |w|^p)^(1/p)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.structured.criteria.base import Criterion, ScoreContext
from prunekit.structured.groups import Group


@dataclass
class GroupMagnitude(Criterion):
    name = "magnitude"
    p: int = 2

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        def value(_name, module):
            from prunekit.core.families import weight_view

            b = module.bias.abs().pow(self.p) if module.bias is not None else None
            return weight_view(module).abs().pow(self.p), b

        return group.unit_sums(value).pow(1.0 / self.p)
