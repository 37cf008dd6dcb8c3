"""How many units each group keeps, and which.

* ``uniform``: every block keeps the same widths. Heads are rounded to whole units (kv groups);
  the MLP absorbs the rounding so that the parameters removed match the budget.
* ``global``: all units of all groups are ranked together (z-scores per group for criteria that
  ask for it) and removed from the least important up, until the parameter budget is met; a
  group never drops below its floor.
* ``blocks``: as ``global`` but within each block against that block's own budget (CFSP's coarse
  step gives the per-block ratios).

Finally kept MLP widths are rounded to the nearest multiple of ``round_to`` (never below it),
putting back the best removed units or removing the weakest kept ones.
"""

from __future__ import annotations

import math

import torch

from prunekit.structured.groups import Group


def min_units(group: Group, floor: float, round_to: int) -> int:
    """Fewest units a group may keep: ``floor`` of its units, at least one unit or ``round_to`` channels."""
    base = max(1, math.ceil(floor * group.n_units))
    if group.kind == "mlp":
        base = max(base, min(round_to, group.n_units))
    return min(base, group.n_units)


def round_kept(group: Group, kept: int, round_to: int) -> int:
    if group.kind != "mlp" or round_to <= 1:
        return kept
    multiple = max(round_to, round_to * round(kept / round_to))
    return min(multiple, group.n_units)


def _standardized(score: torch.Tensor) -> torch.Tensor:
    if len(score) < 2:
        return torch.zeros_like(score)
    return (score - score.mean()) / score.std().clamp_min(1e-12)


def _keep_top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores (ties broken by index), sorted."""
    order = torch.argsort(score, descending=True, stable=True)
    return order[:k].sort().values


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
                    raise ValueError(f"ratio {ratio} would remove every attention head of block {block}; "
                                     f"use a smaller ratio or allocation=global")
            else:
                left = max(budget - removed, 0.0)
                kept = round_kept(g, g.n_units - round(left / g.unit_cost), round_to)
                if g.n_units - round(left / g.unit_cost) < 1:
                    raise ValueError(f"ratio {ratio} would remove every MLP channel of block {block}; "
                                     f"use a smaller ratio or allocation=global")
            removed += (g.n_units - kept) * g.unit_cost
            keeps.append((groups.index(g), _keep_top(s, kept)))
    return [k for _, k in sorted(keeps, key=lambda item: item[0])]


def _greedy(groups: list[Group], keys: list[torch.Tensor], budget: float, floors: list[int]) -> list[int]:
    """Remove units in ascending key order until ``budget`` parameters are gone; kept counts per group."""
    flat = torch.cat(keys)
    owner = torch.cat([torch.full((g.n_units,), i) for i, g in enumerate(groups)])
    kept = [g.n_units for g in groups]
    removed = 0.0
    for j in torch.argsort(flat, stable=True).tolist():
        if removed >= budget:
            break
        i = int(owner[j])
        if kept[i] > floors[i]:
            kept[i] -= 1
            removed += groups[i].unit_cost
    return kept


def ranked(groups: list[Group], scores: list[torch.Tensor], budget: float, standardize: bool, floor: float,
           round_to: int) -> list[torch.Tensor]:
    """Budgeted removal over ``groups`` ranked together; returns kept unit indices per group."""
    keys = [_standardized(s) if standardize else s for s in scores]
    floors = [min_units(g, floor, round_to) for g in groups]
    counts = _greedy(groups, keys, budget, floors)
    return [_keep_top(s, max(round_kept(g, k, round_to), f)) for g, s, k, f in zip(groups, keys, counts, floors)]


def global_(groups, scores, ratio, standardize, floor, round_to) -> list[torch.Tensor]:
    budget = ratio * sum(g.n_units * g.unit_cost for g in groups)
    return ranked(groups, scores, budget, standardize, floor, round_to)


def per_block(groups, scores, block_ratio: dict[int, float], standardize, floor, round_to) -> list[torch.Tensor]:
    keeps: list[torch.Tensor | None] = [None] * len(groups)
    for block, r in block_ratio.items():
        idx = [i for i, g in enumerate(groups) if g.block == block]
        members = [groups[i] for i in idx]
        budget = r * sum(g.n_units * g.unit_cost for g in members)
        for i, k in zip(idx, ranked(members, [scores[i] for i in idx], budget, standardize, floor, round_to)):
            keeps[i] = k
    return keeps
