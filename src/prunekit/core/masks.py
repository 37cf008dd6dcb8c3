"""From scores to masks: the one mask convention, the one top-k, unstructured, per-row and N:M patterns.

A mask is a bool tensor shaped like the (out x in) weight, ``True`` where the weight is pruned, in
every part of prunekit (one-shot, structured and training pruning). Lower score = pruned first;
ties are broken by position (the earlier index is pruned first), so the same scores always give
the same mask. How a sparsity is spread over layers lives in :mod:`prunekit.core.allocation`.

N:M follows the Wanda/SparseGPT convention: N weights are pruned in every group of M
consecutive inputs of each output row (2:4 -> 50% sparsity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from prunekit.core.errors import PrunekitError, unknown_choice


@dataclass(frozen=True)
class Pattern:
    kind: str  # "unstructured" | "per-row" | "n:m"
    n: int = 0
    m: int = 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "n:m" else self.kind

    @property
    def sparsity(self) -> float | None:
        """The sparsity the pattern implies (N:M only)."""
        return self.n / self.m if self.kind == "n:m" else None


PATTERN_CHOICES = ("unstructured", "per-row", "N:M (e.g. 2:4, 4:8)")


def parse_pattern(spec: str | Pattern) -> Pattern:
    if isinstance(spec, Pattern):
        return spec
    text = str(spec).strip().lower()
    if text in ("unstructured", "per-row"):
        return Pattern(text)
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match:
        raise unknown_choice("pattern", spec, PATTERN_CHOICES)
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise PrunekitError(f"bad N:M pattern {spec!r}: need 0 < N < M (N pruned in every M inputs)")
    return Pattern("n:m", n, m)


def check_sparsity(sparsity: float) -> float:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise PrunekitError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return float(sparsity)


def check_pattern_fits(pattern: Pattern, in_features: int, name: str = "layer") -> None:
    if pattern.kind == "n:m" and in_features % pattern.m:
        raise PrunekitError(
            f"pattern {pattern} does not fit {name}: M={pattern.m} does not divide its input width {in_features}"
        )


def lowest_k(scores: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    """Bool mask of the ``k`` lowest entries along ``dim`` (ties: lower index first).

    Long rows use a selection (``kthvalue``, linear time) instead of a full sort: every entry below
    the k-th value is pruned, and of the entries equal to it the first ones by index, as many as
    are still needed -- the same mask a stable sort gives, 2-4x faster on a 576 x 1536 layer."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k <= 0:
        return mask
    if scores.shape[dim] <= 16:  # N:M groups: a sort of a few entries is as fast
        order = torch.sort(scores, dim=dim, stable=True).indices
        return mask.scatter_(dim, order.narrow(dim, 0, k), True)
    kth = scores.kthvalue(k, dim=dim, keepdim=True).values
    below = scores < kth
    ties = scores == kth
    still_needed = k - below.sum(dim, keepdim=True)
    return below | (ties & (ties.cumsum(dim) <= still_needed))


def top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted indices of the ``k`` highest entries of a 1-D score vector: the units a structured
    removal keeps. Ties: the lower index is kept (the order structured pruning has always used)."""
    return lowest_k(-scores, k).nonzero().reshape(-1)


def n_pruned(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights a sparsity prunes (rounded to nearest)."""
    return int(round(numel * sparsity))


def mask_from_scores(scores: torch.Tensor, sparsity: float, pattern: Pattern) -> torch.Tensor:
    """Prune the lowest-scoring weights of an (out x in) score matrix under ``pattern``."""
    out_features, in_features = scores.shape
    if pattern.kind == "unstructured":
        return lowest_k(scores.reshape(-1), n_pruned(scores.numel(), sparsity)).reshape(scores.shape)
    if pattern.kind == "per-row":
        return lowest_k(scores, n_pruned(in_features, sparsity), dim=1)
    check_pattern_fits(pattern, in_features)
    groups = scores.reshape(out_features, in_features // pattern.m, pattern.m)
    return lowest_k(groups, pattern.n, dim=2).reshape(scores.shape)
