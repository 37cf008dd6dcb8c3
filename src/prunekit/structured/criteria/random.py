"""Random scores: the baseline every criterion has to beat (seeded, reproducible)."""

from __future__ import annotations

import torch

from prunekit.structured.criteria.base import Criterion, ScoreContext
from prunekit.structured.groups import Group


class RandomScores(Criterion):
    name = "random"

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        return torch.rand(group.n_units, generator=ctx.generator, dtype=torch.float64)
