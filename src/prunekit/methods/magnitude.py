"""Magnitude pruning: remove the weights with the smallest |W| (per layer, per row, or globally
with ``allocation="global"``)."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.masks import mask_from_scores
from prunekit.methods.base import Method
from prunekit.registry import register


@register
@dataclass
class Magnitude(Method):
    name = "magnitude"

    def prune_layer(self, weight, sparsity, pattern, ctx):
        return mask_from_scores(weight.abs(), sparsity, pattern)
