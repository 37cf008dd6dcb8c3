"""Which weights to prune during training: scores and the masks they give.

A criterion is any one-shot method of :data:`prunekit.core.registry.METHODS` that does not update
weights (:func:`criteria`); its scores are the method's own (:mod:`prunekit.oneshot`). One that
reads no statistics (``magnitude``, ``random``) scores the weights alone; one that declares
``needs`` scores them on calibration data (:mod:`prunekit.training.data_criteria`; ``gradients``
also need labels).

A mask is a bool tensor shaped like the weight, ``True`` = pruned (the one convention of
:mod:`prunekit.core.masks`). Masks are monotone during training: a weight pruned once stays
pruned, so entries already pruned get score ``-inf``. The masks come from the core's allocations
(:mod:`prunekit.core.allocation`):

* scope ``layer`` (allocation ``uniform``): every layer is pruned to the same sparsity.
* scope ``global`` (allocation ``global``): one threshold over all layers (Han et al. 2015; Frankle
  & Carbin 2019 for conv nets). Global magnitude can empty a layer whose weights are all small,
  which disconnects the network; ``floor`` keeps at least that fraction of every layer (its own
  top-scoring weights) and spreads the rest of the budget globally.
"""

from __future__ import annotations

import math

import torch

from prunekit.core.errors import PrunekitError, unknown_choice
from prunekit.core.masks import n_pruned
from prunekit.core.registry import ALLOCATIONS, METHODS

SCOPES = ("layer", "global")
SCOPE_ALLOCATIONS = {"layer": "uniform", "global": "global"}  # scope -> allocation of prunekit.core.allocation


def criteria() -> tuple[str, ...]:
    """The training criteria: every registered one-shot method that does not update weights."""
    from prunekit.oneshot.base import score_methods

    return score_methods()


def check_criterion(criterion: str) -> str:
    """``criterion`` if it is a training criterion, else a one-line error naming the choices."""
    if criterion not in criteria():
        raise unknown_choice("criterion", criterion, criteria())
    return criterion


def needs_data(criterion: str) -> bool:
    """Whether ``criterion`` scores weights on calibration data (it declares statistics it reads)."""
    return bool(METHODS.get(check_criterion(criterion)).needs)


def needs_labels(criterion: str) -> bool:
    """Whether ``criterion``'s calibration data must be labelled (it reads gradients of the loss)."""
    return "gradients" in METHODS.get(check_criterion(criterion)).needs


def score(weight: torch.Tensor, criterion: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scores for ``weight`` (any shape) under a ``criterion`` that reads no data, lower = pruned first."""
    from prunekit.oneshot.base import LayerContext

    if needs_data(criterion):
        raise PrunekitError(f"criterion {criterion!r} needs calibration data: pass scores from "
                            f"data_criteria.data_scores (Pruner(..., calibration=...) does this)")
    return METHODS.build(criterion).scores(weight, LayerContext("", generator=generator))


def _monotone(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Scores with already-pruned entries at -inf, so they are the first to go again."""
    out = {}
    for name, s in scores.items():
        s = s.detach().float().clone()
        if masks is not None and name in masks:
            s[masks[name].to(s.device)] = -math.inf
        out[name] = s
    return out


def keep_count(numel: int, sparsity: float) -> int:
    """Number of weights kept when ``numel`` weights are pruned to ``sparsity`` (rounded to nearest)."""
    return numel - n_pruned(numel, sparsity)


def layerwise_masks(scores: dict[str, torch.Tensor], sparsity: float,
                    masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Prune every tensor to ``sparsity`` by its own scores (True = pruned)."""
    return ALLOCATIONS.build("uniform").masks(_monotone(scores, masks), sparsity)


def global_masks(scores: dict[str, torch.Tensor], sparsity: float, floor: float = 0.0,
                 masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One threshold across all tensors, with at least ``floor`` of every tensor kept (True = pruned).

    Each layer first keeps its ceil(floor * n_l) best weights; of all the other weights, wherever
    they are, the lowest are pruned until the total is reached.
    """
    return ALLOCATIONS.build("global", {"floor": floor}).masks(_monotone(scores, masks), sparsity)


def compute_masks(weights: dict[str, torch.Tensor], sparsity: float, criterion: str = "magnitude",
                  scope: str = "layer", floor: float = 0.0, masks: dict[str, torch.Tensor] | None = None,
                  generator: torch.Generator | None = None,
                  scores: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Masks (True = pruned) at ``sparsity`` for ``weights`` (name -> tensor), monotone w.r.t. the
    previous ``masks``.

    ``scores`` (name -> tensor shaped like the weight) replaces ``criterion``'s own scores; the
    data-aware criteria (``wanda``, ``gblm`` ...: :func:`needs_data`) get theirs from
    :func:`prunekit.training.data_criteria.data_scores`.
    """
    if not 0.0 <= sparsity < 1.0:
        raise PrunekitError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if scope not in SCOPES:
        raise unknown_choice("scope", scope, SCOPES)
    if scores is None:
        scores = {n: score(w, criterion, generator) for n, w in weights.items()}
    if scope == "layer":
        return layerwise_masks(scores, sparsity, masks)
    return global_masks(scores, sparsity, floor, masks)
