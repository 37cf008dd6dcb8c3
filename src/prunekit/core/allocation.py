"""How a target sparsity is spread over layers (or over groups of structured units).

Every allocation answers one question: given the scores of each layer (lower = pruned first) and a
target sparsity, how many entries of each layer are pruned? The entries themselves are then the
lowest ones of their layer (:func:`~prunekit.core.masks.lowest_k`), so :meth:`Allocation.masks`
is shared by all of them. One-shot pruning asks for per-layer ratios (``api._allocate``), training
for masks (``training/criteria.py``), structured pruning for unit counts under a parameter budget
(``structured/allocate.py``).

* ``uniform``: every layer at the target sparsity.
* ``global``: one threshold over all layers' scores (Han et al. 2015; Frankle & Carbin 2019): the
  ``round(sparsity x total)`` lowest of all scores together are pruned. The count is exact: ties at
  the threshold go to the layers in the order given, then by index. ``floor`` keeps at least that
  fraction of every layer (its own best entries), so a layer of small weights is not emptied.
  With ``costs`` (parameters removed with one entry, e.g. a structured unit), entries are removed
  in ascending order until ``sparsity`` of the total cost is gone.
* ``owl``: Outlier Weighed Layerwise sparsity (Yin et al. 2024): layers with more outliers keep more.
* ``blocks``: ``global`` within each block, against that block's own sparsity (per-block budgets,
  e.g. CFSP's coarse step).

The allocations are registered in :data:`prunekit.core.registry.ALLOCATIONS`; callers check the
sparsity before asking.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.masks import lowest_k, n_pruned
from prunekit.core.registry import ALLOCATIONS, option

Scores = Mapping[Hashable, torch.Tensor]


# ------------------------------------------------------------------ counting the lowest entries

def _lowest_entries(scores: torch.Tensor, cap: int | None) -> torch.Tensor:
    """The ``cap`` lowest entries of a layer in index order (flat), or the layer as it is (no copy)
    when ``cap`` is None or covers it."""
    if cap is None or cap >= scores.numel():
        return scores
    flat = scores.reshape(-1)
    return flat[lowest_k(flat, cap)]


def lowest_counts(scores: Scores, k: int, caps: Mapping[Hashable, int] | None = None) -> dict[Hashable, int]:
    """How many entries of each layer are among the ``k`` lowest of all layers' scores together.

    A layer gives at most ``caps[name]`` entries (its lowest ones). Ties at the threshold go to the
    layers in the order given, then by index, so the counts add up to exactly ``k`` and
    ``lowest_k(layer, count)`` of every layer picks the entries ``lowest_k`` would pick over the
    concatenation of all layers (capped). One ``kthvalue``, no sort: fine for a whole LLM."""
    pieces = {name: _lowest_entries(s, None if caps is None else caps[name]) for name, s in scores.items()}
    available = sum(p.numel() for p in pieces.values())
    if k > available:
        raise PrunekitError(f"cannot prune {k} entries: only {available} may be pruned")
    if k <= 0:
        return {name: 0 for name in scores}
    flat = torch.cat([p.reshape(-1).float() for p in pieces.values()])
    threshold = torch.kthvalue(flat, k).values
    del flat
    below = {name: int((p < threshold).sum()) for name, p in pieces.items()}
    ties_left = k - sum(below.values())
    counts = {}
    for name, p in pieces.items():
        take = min(int((p == threshold).sum()), ties_left)
        ties_left -= take
        counts[name] = below[name] + take
    return counts


def budget_counts(scores: Scores, costs: Mapping[Hashable, float], budget: float,
                  caps: Mapping[Hashable, int] | None = None) -> dict[Hashable, int]:
    """How many entries of each layer are removed when entries go in ascending score order (all
    layers together, ties by layer order then index) while less than ``budget`` has been removed.

    Removing an entry of layer ``name`` removes ``costs[name]``; the last entry may overshoot the
    budget. A layer gives at most ``caps[name]`` entries (its lowest ones)."""
    names = list(scores)
    pieces = [_lowest_entries(scores[n], None if caps is None else caps[n]).reshape(-1).double() for n in names]
    if not any(p.numel() for p in pieces):
        return {n: 0 for n in names}
    owner = torch.cat([torch.full((p.numel(),), i) for i, p in enumerate(pieces)])
    order = torch.argsort(torch.cat(pieces), stable=True)
    cost = torch.tensor([float(costs[n]) for n in names], dtype=torch.float64)[owner[order]]
    spent_before = torch.cat([cost.new_zeros(1), cost.cumsum(0)[:-1]])
    removed = int((spent_before < budget).sum())
    counts = torch.bincount(owner[order[:removed]], minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts)}


# ------------------------------------------------------------------ OWL

def owl_ratios(outlier_ratios: Sequence[float], sparsity: float, lam: float = 0.08) -> list[float]:
    """OWL (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity"): layers with more outliers keep more.

    Outlier ratios D_l are mapped linearly onto [s - lam, s + lam] (high D -> low sparsity) and
    shifted so their mean is exactly the target ``sparsity``.
    """
    d = torch.tensor(outlier_ratios, dtype=torch.float64)
    spread = d.max() - d.min()
    if spread <= 0:
        return [sparsity] * len(outlier_ratios)
    scaled = (d - d.min()) / spread * (2 * lam)  # in [0, 2 lam]
    ratios = sparsity + lam - scaled
    ratios = ratios - ratios.mean() + sparsity
    return [float(min(max(r, 0.0), 0.99)) for r in ratios]


def outlier_ratio(scores: torch.Tensor, m: float = 5.0) -> float:
    """Fraction of entries larger than ``m`` times the mean score (OWL's layer outlier distribution)."""
    return float((scores > m * scores.mean()).float().mean())


# ------------------------------------------------------------------ the registered allocations

class Allocation:
    """Spreads a target sparsity over layers. A subclass defines :meth:`ratios` or :meth:`counts`."""

    def ratios(self, scores: Scores, sparsity: float, **context) -> dict[Hashable, float]:
        """Per-layer sparsity (pruned fraction of each layer)."""
        counts = self.counts(scores, sparsity, **context)
        return {name: counts[name] / s.numel() for name, s in scores.items()}

    def counts(self, scores: Scores, sparsity: float, **context) -> dict[Hashable, int]:
        """Per-layer number of pruned entries."""
        ratios = self.ratios(scores, sparsity, **context)
        return {name: n_pruned(s.numel(), ratios[name]) for name, s in scores.items()}

    def masks(self, scores: Scores, sparsity: float, **context) -> dict[Hashable, torch.Tensor]:
        """Per-layer masks shaped like the scores, ``True`` = pruned: the lowest ``counts`` of each layer."""
        counts = self.counts(scores, sparsity, **context)
        return {name: lowest_k(s.reshape(-1), counts[name]).reshape(s.shape) for name, s in scores.items()}


@ALLOCATIONS.register("uniform")
@dataclass
class Uniform(Allocation):
    """Every layer is pruned to the target sparsity."""

    def ratios(self, scores: Scores, sparsity: float, **context) -> dict[Hashable, float]:
        return {name: sparsity for name in scores}


@ALLOCATIONS.register("global")
@dataclass
class Global(Allocation):
    """One threshold over all layers' scores: the lowest entries are pruned wherever they are."""

    floor: float = option(0.0, "fraction of every layer that is kept (its own best entries)", min=0, max=1)

    def counts(self, scores: Scores, sparsity: float, *, costs: Mapping[Hashable, float] | None = None,
               min_kept: Mapping[Hashable, int] | None = None, **context) -> dict[Hashable, int]:
        """Pruned entries per layer. ``costs``: parameters per entry of each layer (the budget is then
        ``sparsity`` of the total cost); ``min_kept``: entries each layer keeps besides the floor."""
        caps = {}
        for name, s in scores.items():
            least = max(math.ceil(self.floor * s.numel()), (min_kept or {}).get(name, 0))
            caps[name] = s.numel() - min(least, s.numel())
        if costs is not None:
            budget = sparsity * sum(s.numel() * costs[name] for name, s in scores.items())
            return budget_counts(scores, costs, budget, caps)
        total = sum(s.numel() for s in scores.values())
        k = n_pruned(total, sparsity)
        if sum(caps.values()) < k:
            raise PrunekitError(
                f"floor {self.floor!r} keeps {total - sum(caps.values())} weights but sparsity {sparsity!r} keeps "
                f"only {total - k}; lower the floor or the sparsity")
        return lowest_counts(scores, k, caps)


@ALLOCATIONS.register("owl")
@dataclass
class Owl(Allocation):
    """Outlier-weighted (Yin et al. 2024): layers with more outlier scores are pruned less."""

    lam: float = option(0.08, "per-layer sparsities span [s - lam, s + lam]", min=0, below=1)
    m: float = option(5.0, "an outlier is a score above m x the mean score of its layer", above=0)

    def ratios(self, scores: Scores, sparsity: float, **context) -> dict[Hashable, float]:
        """``scores``: one tensor per allocation unit (one-shot pools each block's Wanda scores)."""
        d = [outlier_ratio(s, self.m) for s in scores.values()]
        return dict(zip(scores, owl_ratios(d, sparsity, self.lam)))


@ALLOCATIONS.register("blocks")
@dataclass
class Blocks(Allocation):
    """Per-block budgets: ``global`` within each block, against that block's own sparsity."""

    floor: float = option(0.0, "fraction of every layer that is kept (its own best entries)", min=0, max=1)

    def counts(self, scores: Scores, sparsity: float, *, blocks: Mapping[Hashable, Hashable],
               block_sparsity: Mapping[Hashable, float] | None = None, **context) -> dict[Hashable, int]:
        """``blocks``: the block of each layer; ``block_sparsity``: each block's sparsity (default:
        ``sparsity`` everywhere). ``costs``/``min_kept`` as for ``global``."""
        counts = {}
        for block in dict.fromkeys(blocks[name] for name in scores):
            members = {name: s for name, s in scores.items() if blocks[name] == block}
            target = sparsity if block_sparsity is None else block_sparsity[block]
            counts.update(Global(self.floor).counts(members, target, **context))
        return {name: counts[name] for name in scores}
