"""The one-shot methods as delta methods: a method of :data:`prunekit.core.registry.METHODS` that only
scores weights and reads statistics the block runner collects (``magnitude``, ``wanda``, ``random``
...) prunes a delta ``D`` as it prunes a weight: its scores of ``D`` in place of ``W``, the lowest
entries dropped under the method's own pattern (``per_row`` overrides it), the kept ones not
rescaled. Wanda's score of the delta, |D_ij| * ||X_j||, is DAREx's importance-based delta pruning.

:func:`register_score_methods` registers each of them in
:data:`prunekit.core.registry.DELTA_METHODS` under the method's own name, with its own options;
``import prunekit.delta`` calls it, so nothing is written twice.
"""

from __future__ import annotations

import dataclasses

import torch

from prunekit.core.masks import Pattern, parse_pattern
from prunekit.core.registry import DELTA_METHODS, METHODS, option
from prunekit.core.stats import LAYER_NEEDS
from prunekit.delta.base import DeltaContext, DeltaMethod
from prunekit.oneshot.base import LayerContext, Method, score_methods

PER_ROW_HELP = "drop the same fraction in every output row (false: over the whole tensor); default: the method's own"


class MethodScores(DeltaMethod):
    """A one-shot method applied to the delta (the base of the classes :func:`delta_method` makes)."""

    per_row: bool | None

    def pattern(self) -> Pattern:
        if self.per_row is None:
            return parse_pattern(self.default_pattern)
        return Pattern("per-row" if self.per_row else "unstructured")

    def prune(self, delta: torch.Tensor, sparsity: float, ctx: DeltaContext) -> torch.Tensor:
        mask = self.prune_layer(delta, sparsity, self.pattern(), LayerContext(ctx.name, ctx.stats, None, ctx.generator))
        return delta.masked_fill(mask, 0.0)


def delta_method(method: type[Method]) -> type:
    """The delta method of the one-shot ``method``: its options and scores, and ``per_row``."""
    summary = ((method.__doc__ or "").strip().splitlines() or [method.name])[0].rstrip(".")
    namespace = {"needs": method.needs,  # the method's own, not DeltaMethod's (which comes first in the MRO)
                 "__doc__": f"One-shot {method.name} on the delta (lowest dropped, no rescaling): {summary}.",
                 "__module__": __name__}
    return dataclasses.make_dataclass(f"Delta{method.__name__}", [("per_row", bool | None, option(None, PER_ROW_HELP))],
                                      bases=(MethodScores, method), namespace=namespace)


def register_score_methods() -> None:
    """Register every METHODS entry usable on a delta in DELTA_METHODS (once)."""
    for name in score_methods(LAYER_NEEDS):
        if name not in DELTA_METHODS:
            DELTA_METHODS.register(name)(delta_method(METHODS.get(name)))
