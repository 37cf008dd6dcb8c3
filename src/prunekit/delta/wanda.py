"""Wanda-style delta pruning: the delta entry D_ij matters as much as the output change it makes,
|D_ij| * ||X_j|| (Sun et al. 2024's score, applied to the delta as DAREx's importance-based
delta pruning does), with ||X_j|| the norm of input channel j over the calibration tokens."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.core.registry import DELTA_METHODS, option
from prunekit.delta.base import DeltaMethod
from prunekit.delta.magnitude import drop_lowest


@DELTA_METHODS.register("wanda")
@dataclass
class DeltaWanda(DeltaMethod):
    """|D| * ||X||: drop the delta entries that change the layer's output least (per output row)."""

    needs = frozenset({"norms"})
    per_row: bool = option(True, "compare entries within each output row, as Wanda does (false: whole tensor)")

    def prune(self, delta, sparsity, ctx):
        scores = delta.abs() * ctx.stats.column_norms().to(delta.dtype).reshape(1, -1)
        return delta.masked_fill(drop_lowest(scores, sparsity, self.per_row), 0.0)
