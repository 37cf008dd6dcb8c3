"""How many units each group keeps, and which.

* ``uniform``: every block keeps the same widths. Heads are rounded to whole units (kv groups);
  the MLP absorbs the rounding so that the parameters removed match the budget.
* ``global``: all units of all groups are ranked together (z-scores per group for criteria that
  ask for it) and removed from the least important up, until the parameter budget is met; a
  group never drops below its floor.
* ``blocks``: as ``global`` but within each block against that block's own budget (CFSP's coarse
  step gives the per-block ratios).

The ranking and the budget are the core's (``global`` and ``blocks`` of
:mod:`prunekit.core.allocation`, with each unit's parameter cost); what is structured stays here:
the floors in units, heads kept whole, and kept MLP widths rounded to the nearest multiple of
``round_to`` (never below it; :func:`~prunekit.structured.graph.kept_units`, the rule CNN filters
use too), putting back the best removed units or removing the weakest kept ones. The kept units of a group are its highest-scoring ones (:func:`~prunekit.core.masks.top_k_indices`).
"""

from __future__ import annotations

import math

import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.masks import top_k_indices
from prunekit.core.registry import ALLOCATIONS
from prunekit.structured.graph import Group, kept_units

NAMES = ("uniform", "global", "blocks")  # the entries of the core ALLOCATIONS that structured pruning applies
WIDTHS = ("per-layer", "uniform")  # per-layer: the allocation's widths; uniform: a folder plain transformers loads


def min_units(group: Group, floor: float, round_to: int) -> int:
    """Fewest units a group may keep: ``floor`` of its units, at least one unit or ``round_to`` channels."""
    base = max(1, math.ceil(floor * group.n_units))
    if group.kind == "mlp":
        base = max(base, min(round_to, group.n_units))
    return min(base, group.n_units)


def _standardized(score: torch.Tensor) -> torch.Tensor:
    if len(score) < 2:
        return torch.zeros_like(score)
    return (score - score.mean()) / score.std().clamp_min(1e-12)


def uniform(groups: list[Group], scores: list[torch.Tensor], ratio: float, round_to: int) -> list[torch.Tensor]:
    keeps = []
    for block in sorted({g.block for g in groups}):
        members = [(g, s) for g, s in zip(groups, scores) if g.block == block]
        budget = ratio * sum(g.n_units * g.unit_cost for g, _ in members)
        removed = 0.0
        for g, s in sorted(members, key=lambda m: m[0].kind != "heads"):  # heads first, MLP absorbs rounding
            if g.kind == "heads":
                kept = g.n_units - round(ratio * g.n_units)
                if kept < 1:
                    raise PrunekitError(f"ratio {ratio} would remove every attention head of block {block}; "
                                     f"use a smaller ratio or allocation=global")
            else:
                left = max(budget - removed, 0.0)
                kept = kept_units(g, g.n_units - round(left / g.unit_cost), round_to)
                if g.n_units - round(left / g.unit_cost) < 1:
                    raise PrunekitError(f"ratio {ratio} would remove every MLP channel of block {block}; "
                                     f"use a smaller ratio or allocation=global")
            removed += (g.n_units - kept) * g.unit_cost
            keeps.append((groups.index(g), top_k_indices(s, kept)))
    return [k for _, k in sorted(keeps, key=lambda item: item[0])]


def _kept_counts(allocation, groups: list[Group], keys: list[torch.Tensor], ratio: float, floor: float,
                 round_to: int, **context) -> list[int]:
    """Units kept per group when the core's ``allocation`` removes ``ratio`` of the parameters."""
    pruned = ALLOCATIONS.build(allocation, {"floor": floor}).counts(
        dict(enumerate(keys)), ratio, costs={i: g.unit_cost for i, g in enumerate(groups)},
        min_kept={i: min_units(g, 0.0, round_to) for i, g in enumerate(groups)}, **context)
    return [g.n_units - pruned[i] for i, g in enumerate(groups)]


def _keeps(groups: list[Group], keys: list[torch.Tensor], counts: list[int], floor: float,
           round_to: int) -> list[torch.Tensor]:
    """Kept unit indices per group: each count rounded (MLP widths), never below the group's floor."""
    floors = [min_units(g, floor, round_to) for g in groups]
    return [top_k_indices(s, max(kept_units(g, k, round_to), f)) for g, s, k, f in zip(groups, keys, counts, floors)]


def _keys(scores: list[torch.Tensor], standardize: bool) -> list[torch.Tensor]:
    return [_standardized(s) if standardize else s for s in scores]


def global_(groups, scores, ratio, standardize, floor, round_to) -> list[torch.Tensor]:
    """All units of all groups ranked together against one parameter budget (``ratio`` of all)."""
    keys = _keys(scores, standardize)
    return _keeps(groups, keys, _kept_counts("global", groups, keys, ratio, floor, round_to), floor, round_to)


def per_block(groups, scores, block_ratio: dict[int, float], standardize, floor, round_to) -> list[torch.Tensor]:
    """As :func:`global_`, within each block against that block's own budget (``block_ratio[block]``)."""
    keys = _keys(scores, standardize)
    counts = _kept_counts("blocks", groups, keys, 0.0, floor, round_to,
                          blocks={i: g.block for i, g in enumerate(groups)}, block_sparsity=block_ratio)
    return _keeps(groups, keys, counts, floor, round_to)
