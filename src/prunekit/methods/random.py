"""Random pruning: the baseline every method must beat. Seeded, so masks are reproducible."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.masks import mask_from_scores
from prunekit.methods.base import Method
from prunekit.registry import register


@register
@dataclass
class Random(Method):
    name = "random"

    def prune_layer(self, weight, sparsity, pattern, ctx):
        scores = torch.rand(weight.shape, generator=ctx.generator).to(weight.device)
        return mask_from_scores(scores, sparsity, pattern)
