"""Random pruning: the baseline every method must beat. Seeded, so masks are reproducible."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.registry import METHODS
from prunekit.oneshot.base import Method


@METHODS.register("random")
@dataclass
class Random(Method):
    """Seeded uniform noise: the baseline every criterion has to beat."""

    def scores(self, weight, ctx):
        return torch.rand(weight.shape, generator=ctx.generator).to(weight.device)
