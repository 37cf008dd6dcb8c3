"""Random scores: the baseline every criterion has to beat (seeded, reproducible)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.registry import CRITERIA
from prunekit.structured.criteria.base import LLM_STRUCTURES, Criterion, ScoreContext
from prunekit.structured.graph import Group


@CRITERIA.register("random")
@dataclass
class RandomScores(Criterion):
    """Seeded random scores: the baseline every criterion has to beat (LLM and CNN)."""

    structures = frozenset({*LLM_STRUCTURES, "filters"})
    block_needs = frozenset()

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        """Channels, heads, filters: uniform scores; blocks: a seeded random order (block ``perm[k]`` gets score k)."""
        if group.kind == "blocks":
            return torch.argsort(torch.randperm(group.n_units, generator=ctx.generator)).double()
        return torch.rand(group.n_units, generator=ctx.generator, dtype=torch.float64)
