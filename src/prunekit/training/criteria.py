"""Which weights to prune: scores (magnitude, random) and how to turn them into masks.

A mask is a bool tensor shaped like the weight, ``True`` = kept. Masks are monotone during
training: a weight pruned once stays pruned, so entries already masked get score ``-inf``.

* layer-wise: every layer is pruned to the same sparsity.
* global: one threshold over all layers (Han et al. 2015; Frankle & Carbin 2019 for conv nets).
  Global magnitude can empty a layer whose weights are all small, which disconnects the network;
  ``floor`` keeps at least that fraction of every layer (its own top-scoring weights) and spreads
  the rest of the budget globally.
"""

from __future__ import annotations

import math

import torch

CRITERIA = ("magnitude", "random", "wanda", "gblm")  # the last two need calibration data (data_criteria.py)
SCOPES = ("layer", "global")


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|w|: the smallest weights matter least (Han et al. 2015, "Learning both weights and connections")."""
    return weight.detach().abs().float()


def random_scores(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random scores: the baseline every criterion has to beat."""
    return torch.rand(weight.shape, generator=generator)


def score(weight: torch.Tensor, criterion: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scores for ``weight`` under ``criterion`` (``magnitude`` or ``random``)."""
    if criterion == "magnitude":
        return magnitude_scores(weight)
    if criterion == "random":
        return random_scores(weight, generator)
    raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")


def _mask_scores(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scores with already-pruned entries at -inf, so they are the first to go again."""
    s = scores.detach().float().reshape(-1).clone()
    if mask is not None:
        s[~mask.reshape(-1)] = -math.inf
    return s


def _keep_top(flat_scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Flat bool mask keeping exactly the ``keep`` highest scores (ties broken by index order of topk)."""
    mask = torch.zeros(flat_scores.numel(), dtype=torch.bool)
    if keep > 0:
        mask[torch.topk(flat_scores, keep, sorted=False).indices] = True
    return mask


def keep_count(numel: int, sparsity: float) -> int:
    """Number of weights kept when ``numel`` weights are pruned to ``sparsity`` (rounded to nearest)."""
    return numel - round(sparsity * numel)


def layerwise_masks(scores: dict[str, torch.Tensor], sparsity: float,
                    masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Prune every tensor to ``sparsity`` by its own scores."""
    out = {}
    for name, s in scores.items():
        flat = _mask_scores(s, None if masks is None else masks.get(name))
        out[name] = _keep_top(flat, keep_count(flat.numel(), sparsity)).reshape(s.shape)
    return out


def global_masks(scores: dict[str, torch.Tensor], sparsity: float, floor: float = 0.0,
                 masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One threshold across all tensors, with at least ``floor`` of every tensor kept.

    Each layer first reserves its ceil(floor * n_l) best weights; the remaining budget
    (total kept minus reservations) goes to the best of all other weights, wherever they are.
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor!r}")
    flats = {n: _mask_scores(s, None if masks is None else masks.get(n)) for n, s in scores.items()}
    total = sum(f.numel() for f in flats.values())
    keep_total = keep_count(total, sparsity)
    reserved = {n: min(f.numel(), math.ceil(floor * f.numel())) for n, f in flats.items()}
    if sum(reserved.values()) > keep_total:
        raise ValueError(
            f"floor {floor!r} keeps {sum(reserved.values())} weights but sparsity {sparsity!r} keeps only "
            f"{keep_total}; lower the floor or the sparsity")
    base = {n: _keep_top(f, reserved[n]) for n, f in flats.items()}
    rest = torch.cat([f.masked_fill(base[n], -math.inf) for n, f in flats.items()])
    extra = _keep_top(rest, keep_total - sum(reserved.values()))
    out, offset = {}, 0
    for n, f in flats.items():
        kept = base[n] | extra[offset: offset + f.numel()]
        out[n] = kept.reshape(scores[n].shape)
        offset += f.numel()
    return out


def compute_masks(weights: dict[str, torch.Tensor], sparsity: float, criterion: str = "magnitude",
                  scope: str = "layer", floor: float = 0.0, masks: dict[str, torch.Tensor] | None = None,
                  generator: torch.Generator | None = None,
                  scores: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Masks at ``sparsity`` for ``weights`` (name -> tensor), monotone w.r.t. the previous ``masks``.

    ``scores`` (name -> tensor shaped like the weight) replaces ``criterion``'s own scores; the
    data-aware criteria (``wanda``, ``gblm``) get theirs from :func:`prunekit.training.data_criteria.data_scores`.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if scores is None:
        if criterion in ("wanda", "gblm"):
            raise ValueError(f"criterion {criterion!r} needs calibration data: pass scores from "
                             f"data_criteria.data_scores (Pruner(..., calibration=...) does this)")
        scores = {n: score(w, criterion, generator) for n, w in weights.items()}
    if scope == "layer":
        return layerwise_masks(scores, sparsity, masks)
    if scope == "global":
        return global_masks(scores, sparsity, floor, masks)
    raise ValueError(f"unknown scope {scope!r}; expected one of {SCOPES}")
