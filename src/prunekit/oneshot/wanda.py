"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs").

Score S_ij = |W_ij| * ||X_j||_2 (Eq. 1): a weight matters when it is large *and* its input
channel carries large activations. Compared within each output row by default (Sec. 3), no
weight update.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.core.registry import METHODS
from prunekit.oneshot.base import Method


def wanda_scores(weight, stats):
    return weight.abs() * stats.column_norms().unsqueeze(0)


@METHODS.register("wanda")
@dataclass
class Wanda(Method):
    """|W| x ||X_j||: weight magnitude times input activation norm (Sun et al. 2023)."""

    needs = frozenset({"norms"})
    default_pattern = "per-row"

    def scores(self, weight, ctx):
        return wanda_scores(weight, ctx.stats)
