"""What every one-shot method shares: the per-layer contract and the statistics it may ask for.

A method is a config dataclass registered in :data:`prunekit.core.registry.METHODS`. Most methods
are a *criterion*: :meth:`Method.scores` rates every weight (lower = pruned first) and the core's
:func:`~prunekit.core.masks.mask_from_scores` turns the scores into a mask under the pattern. A method
that also updates the kept weights (SparseGPT) overrides :meth:`Method.prune_layer`. Training-time
pruning and delta pruning reuse the same ``scores``: :func:`score_methods` lists the methods usable
wherever given statistics exist, from their declared ``needs`` and ``updates_weights``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from prunekit.core.masks import Pattern, mask_from_scores
from prunekit.core.registry import METHODS
from prunekit.core.stats import NEEDS, LayerStats, check_needs


@dataclass
class LayerContext:
    """Everything a method may use to prune one layer besides its weight."""

    name: str
    stats: LayerStats | None = None
    gradient: torch.Tensor | None = None  # (out x in), reduced as the method's gradient_reduction says
    generator: torch.Generator | None = field(default=None, repr=False)


class Method:
    """A one-shot pruning method.

    ``needs`` declares the calibration statistics the method reads (a subset of
    :data:`prunekit.core.stats.NEEDS`): ``norms`` (per-input-channel sums of squares), ``hessian``
    (X^T X), ``gradients`` (per-weight gradients, reduced over the calibration windows by
    ``gradient_reduction``: ``"mean"`` or ``"l2"``, see :func:`~prunekit.core.stats.collect_gradients`).
    ``updates_weights`` says whether ``prune_layer`` changes the kept weights.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    gradient_reduction: ClassVar[str] = "mean"
    default_pattern: ClassVar[str] = "unstructured"
    updates_weights: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        check_needs(cls.needs, f"method {cls.__name__}", cls.gradient_reduction)

    @property
    def needs_calibration(self) -> bool:
        return bool(self.needs)

    def scores(self, weight: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """Importance of every weight of the (out x in) ``weight``: lower = pruned first."""
        raise NotImplementedError(f"method {self.name!r} has no per-weight scores")

    def prune_layer(self, weight: torch.Tensor, sparsity: float, pattern: Pattern, ctx: LayerContext) -> torch.Tensor:
        """The bool mask of pruned weights (True = pruned) of the (out x in) ``weight``, a view that writes
        through. A method that reconstructs weights updates ``weight`` in place; the runner zeroes
        the masked entries afterwards in every case."""
        return mask_from_scores(self.scores(weight, ctx), sparsity, pattern)


def score_methods(statistics: frozenset[str] = NEEDS) -> tuple[str, ...]:
    """The registered methods that only score weights (they do not update the kept ones) and read no
    statistic outside ``statistics``: the criteria a driver collecting those statistics can run
    (training: every statistic it can collect; delta pruning: the block runner's per-layer ones)."""
    return tuple(name for name in METHODS.names()
                 if not METHODS.get(name).updates_weights and METHODS.get(name).needs <= statistics)
