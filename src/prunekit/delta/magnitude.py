"""Magnitude pruning of the delta: keep the entries with the largest |D| (per tensor), no rescaling."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.core.masks import lowest_k, n_pruned
from prunekit.core.registry import DELTA_METHODS, option
from prunekit.delta.base import DeltaMethod


@DELTA_METHODS.register("magnitude")
@dataclass
class DeltaMagnitude(DeltaMethod):
    """|D|: drop the smallest delta entries of each tensor (or of each output row)."""

    per_row: bool = option(False, "drop the same fraction in every output row instead of over the whole tensor")

    def prune(self, delta, sparsity, ctx):
        return delta.masked_fill(drop_lowest(delta.abs(), sparsity, self.per_row), 0.0)


def drop_lowest(scores, sparsity: float, per_row: bool):
    """The mask (True = dropped) of the lowest ``sparsity`` of ``scores``, per tensor or per row."""
    if per_row:
        return lowest_k(scores, n_pruned(scores.shape[1], sparsity), dim=1)
    return lowest_k(scores.reshape(-1), n_pruned(scores.numel(), sparsity)).reshape(scores.shape)
