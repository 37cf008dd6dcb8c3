"""Group magnitude: the L1 or L2 norm of all weights a unit owns (Li et al. 2017, "Pruning Filters
for Efficient ConvNets", eq. 1 with p=1; the L2 variant as in Torch-Pruning's GroupNormImportance).

score(u) = (sum over the unit's producer rows, producer bias entries and consumer columns of |w|^p)^(1/p)

For a CNN filter group (kind ``filters``, :func:`~prunekit.structured.cnn.find_cnn_groups`) the unit is
an output channel: its producer filters, its depthwise filters and its consumers' input columns (no
biases; float64). LLM weights are read in float32 at least (bf16/fp16 powers lose digits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.registry import CRITERIA, option
from prunekit.structured.criteria.base import LLM_STRUCTURES, Criterion, ScoreContext
from prunekit.structured.graph import Group


@CRITERIA.register("magnitude", aliases=("l2",))
@dataclass
class GroupMagnitude(Criterion):
    """Group L_p norm of the weights a unit owns (alias l2; no calibration data; LLM and CNN)."""

    structures = frozenset({*LLM_STRUCTURES, "filters"})
    p: int = option(2, "norm order: 2 is the Euclidean norm, 1 the sum of |w|", min=1)

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        if group.kind == "blocks":
            return super().score(group, ctx)

        def value(_name, weight, bias):
            return weight.abs().pow(self.p), bias.abs().pow(self.p) if bias is not None else None

        return group.unit_sums(value).pow(1.0 / self.p)


@CRITERIA.register("l1")
@dataclass
class GroupL1(GroupMagnitude):
    """Group L1 norm of the weights a unit owns (Li et al. 2017): magnitude with p = 1."""

    p: int = option(1, "norm order (fixed; use magnitude for another p)", choices=(1,))
