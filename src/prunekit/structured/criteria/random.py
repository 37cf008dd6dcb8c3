"""Random scores: the baseline every criterion has to beat (seeded, reproducible)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunekit.core.registry import CRITERIA
from prunekit.structured.criteria.base import LLM_STRUCTURES, Criterion, ScoreContext
from prunekit.structured.groups import Group


@CRITERIA.register("random")
@dataclass
class RandomScores(Criterion):
    """Seeded random scores: the baseline every criterion has to beat (LLM and CNN)."""

    structures = frozenset({*LLM_STRUCTURES, "filters"})
    block_needs = frozenset()

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        return torch.rand(group.n_units, generator=ctx.generator, dtype=torch.float64)

    def score_filters(self, model: nn.Module, group, ctx: ScoreContext) -> torch.Tensor:
        return self.score(group, ctx)

    def block_scores(self, ctx: ScoreContext, n_blocks: int) -> torch.Tensor:
        """A seeded random order of the blocks: block ``perm[k]`` gets score k."""
        perm = torch.randperm(n_blocks, generator=ctx.generator)
        return torch.argsort(perm).double()
