"""DARE: drop a random fraction p of the delta and rescale the rest by 1/(1-p).

Yu et al. 2024, "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a
Free Lunch" (ICML): each delta entry is kept with probability 1-p and divided by 1-p, so the
expected delta -- and, to first order, the expected output of every layer -- is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.core.registry import DELTA_METHODS, option
from prunekit.delta.base import DeltaMethod, random_drop


@DELTA_METHODS.register("dare")
@dataclass
class Dare(DeltaMethod):
    """Random drop with probability p, the kept entries rescaled by 1/(1-p) (Yu et al. 2024)."""

    rescale: bool = option(True, "divide the kept entries by 1-p (false: drop only)")

    def prune(self, delta, sparsity, ctx):
        kept = delta.masked_fill(random_drop(delta, sparsity, ctx.generator), 0.0)
        ctx.factor = 1.0 / (1.0 - sparsity) if self.rescale else 1.0
        return kept * ctx.factor
