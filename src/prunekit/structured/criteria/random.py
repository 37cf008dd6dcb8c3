"""Random scores: the baseline every criterion has to beat (seeded, reproducible)."""

from __future__ import annotations

import torch

from prunekit.structured.criteria.base import Criterion, ScoreContext
from prunekit.structured.groups import Group


class RandomScores(Criterion):
    name = "random"

    block_needs = frozenset()

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        return torch.rand(group.n_units, generator=ctx.generator, dtype=torch.float64)

    def block_scores(self, ctx: ScoreContext, n_blocks: int) -> torch.Tensor:
        """A seeded random order of the blocks: block ``perm[k]`` gets score k."""
        perm = torch.randperm(n_blocks, generator=ctx.generator)
        return torch.argsort(perm).double()
