"""Forgetting events: Toneva et al., "An Empirical Study of Example Forgetting during Deep Neural
Network Learning" (ICLR 2019).

An example is *forgotten* at presentation ``t`` when it was classified correctly at presentation
``t-1`` and incorrectly at ``t`` (their Sec. 2). The score is the number of such events.

Examples that are **never** learned have no forgetting event at all, but they are the hardest, not
the easiest: the paper treats them as forgotten infinitely often. A score of 0 for them (a known
defect) would put mislabeled examples among the most prunable. Here they get
``n_presentations``, which is strictly larger than any possible count of events
(at most ``floor(n_presentations / 2)``), so they rank as the most forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunekit.core.registry import SCORES
from prunekit.data.scores.base import Score


def forgetting_scores(correct: np.ndarray) -> np.ndarray:
    """Forgetting counts from a ``(T, N)`` correctness history.

    ``correct[t, i]`` is 1/0 (or ``True``/``False``) for example ``i`` at its ``t``-th recorded
    presentation, NaN where it was not presented.
    """
    hist = np.asarray(correct, dtype=np.float64)
    n_steps, n = hist.shape
    counts = np.zeros(n)
    learned = np.zeros(n, dtype=bool)
    prev = np.full(n, np.nan)
    for t in range(n_steps):
        cur = hist[t]
        seen = ~np.isnan(cur)
        counts += seen & (prev == 1) & (cur == 0)
        learned |= seen & (cur == 1)
        prev = np.where(seen, cur, prev)
    presentations = (~np.isnan(hist)).sum(axis=0)
    counts[~learned] = np.maximum(presentations[~learned], 1)
    return counts


@SCORES.register("forgetting")
@dataclass
class Forgetting(Score):
    """Number of forgetting events (correct -> wrong) during training (Toneva et al. 2019)."""

    direction = "higher=harder (never-learned examples get the maximum)"
    flags = "mislabelled"
    needs = frozenset({"dynamics", "labels"})

    def compute(self, ctx):
        return ctx.dynamics.forgetting()
