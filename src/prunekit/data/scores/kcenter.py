"""Geometry score on embeddings: greedy k-center coverage (Sener & Savarese, "Active Learning for
Convolutional Neural Networks: A Core-Set Approach", ICLR 2018).

Greedy k-center repeatedly picks the point farthest from everything picked so far. The score of a
point is its distance to the nearest *earlier* pick when it was picked (its marginal coverage gain),
or, for points not picked within ``n_centers``, its distance to the nearest center at the end.
Greedy gains never increase, so this is one consistent ranking: high = far from the rest (rare,
atypical, "hard"); 0 = an exact duplicate (in embedding space) of a point already covered.
Pruning the lowest scores therefore removes redundant examples first.

Cost is ``O(n_centers * N * d)``; for large N pass ``n_centers`` (the scores of unpicked points are
then distances to the nearest of the ``n_centers`` centers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prunekit.core.registry import SCORES, option
from prunekit.data.scores.base import Score


def kcenter_scores(embeddings: torch.Tensor | np.ndarray, n_centers: int | None = None, seed: int = 0) -> np.ndarray:
    """Greedy k-center marginal gains (see module docstring)."""
    emb = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    n = len(emb)
    n_centers = n if n_centers is None else min(int(n_centers), n)
    scores = torch.zeros(n, dtype=torch.float64)
    first = int(np.random.default_rng(seed).integers(n))
    # the first pick has no earlier center: give it the largest distance to any point
    min_dist = (emb - emb[first]).norm(dim=1)
    scores[first] = float(min_dist.max())
    picked = torch.zeros(n, dtype=torch.bool)
    picked[first] = True
    for _ in range(n_centers - 1):
        cand = min_dist.masked_fill(picked, -1.0)
        nxt = int(cand.argmax())
        scores[nxt] = float(min_dist[nxt])
        picked[nxt] = True
        min_dist = torch.minimum(min_dist, (emb - emb[nxt]).norm(dim=1))
    scores[~picked] = min_dist[~picked].double()
    return scores.numpy()


def duplicate_mask(scores: np.ndarray, atol: float = 1e-6) -> np.ndarray:
    """Examples whose k-center gain is ~0: duplicates of an earlier pick."""
    return np.asarray(scores) <= atol


@SCORES.register("kcenter")
@dataclass
class KCenter(Score):
    """Greedy k-center coverage gain on the final embeddings (Sener & Savarese 2018); 0 = duplicate."""

    direction = "higher=harder (farther from the covered set; 0 = duplicate)"
    flags = "atypical"
    needs = frozenset({"embeddings"})
    n_centers: int | None = option(2000, "greedy picks; the others score their distance to the nearest pick "
                                   "(null: every example, O(N^2 d))", min=1)

    def compute(self, ctx):
        return kcenter_scores(ctx.embeddings, n_centers=self.n_centers, seed=ctx.seed)
