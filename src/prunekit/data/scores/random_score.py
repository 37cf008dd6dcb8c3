"""Random score: a uniform draw per example, the baseline every other score must beat."""

from __future__ import annotations

import numpy as np

NAME = "random"
DIRECTION = "higher=harder (meaningless: uniform noise)"


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """``n`` i.i.d. U(0, 1) values from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).random(n)
