"""Random score: a uniform draw per example, the baseline every other score must beat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunekit.core.registry import SCORES
from prunekit.data.scores.base import Score


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """``n`` i.i.d. U(0, 1) values from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).random(n)


@SCORES.register("random")
@dataclass
class Random(Score):
    """Uniform noise per example, seeded by the run's seed: the baseline."""

    direction = "higher=harder (meaningless: uniform noise)"
    flags = "nothing"

    def compute(self, ctx):
        return random_scores(ctx.n, ctx.seed)
