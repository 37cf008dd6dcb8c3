"""The contract of a structured criterion: one importance score per unit of a coupled group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from prunekit.core.stats import ModelStats, check_needs
from prunekit.structured.groups import Group


@dataclass
class ScoreContext:
    """What a criterion may read besides the group's weights."""

    stats: ModelStats = field(default_factory=ModelStats)
    generator: torch.Generator | None = None


class Criterion:
    """Higher score = more important = kept.

    ``needs`` declares the statistics :meth:`score` reads (a subset of
    :data:`prunekit.core.stats.NEEDS`: ``moments``, ``gradients`` reduced by
    ``gradient_reduction``, ``similarity``); ``block_needs`` those :meth:`block_scores` reads for
    depth pruning. ``standardize`` says whether global allocation compares z-scores per group
    (scores of different layers are not on one scale) or raw scores; ``allocation`` is the default
    allocation of the method; :meth:`block_ratios` gives per-block budgets (allocation "blocks").
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    gradient_reduction: ClassVar[str] = "mean"
    block_needs: ClassVar[frozenset[str]] = frozenset({"similarity"})
    standardize: ClassVar[bool] = False
    allocation: ClassVar[str] = "uniform"
    bias_compensation: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        check_needs(cls.needs | cls.block_needs, f"structured criterion {cls.__name__}", cls.gradient_reduction)

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        raise NotImplementedError

    def block_scores(self, ctx: ScoreContext, n_blocks: int) -> torch.Tensor:
        """Importance of every block for depth pruning (lower = removed first): ShortGPT's block
        influence 1 - E[cos(x_in, x_out)] (see :mod:`.block_importance`)."""
        from prunekit.structured.criteria.block_importance import block_influence

        return block_influence(ctx.stats.block_similarity)

    def block_ratios(self, stats: ModelStats, ratio: float, costs: list[float]) -> list[float]:
        """Per-block removal ratios for allocation "blocks" whose parameter-weighted mean is
        ``ratio`` (``costs``: prunable parameters per block). The same ratio everywhere unless a
        criterion knows better."""
        return [ratio] * len(costs)


def weights(_name, module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight as out x in, bias) of a module, for :meth:`Group.unit_sums`."""
    from prunekit.core.families import weight_view

    return weight_view(module), module.bias


def consumer_channel_sum(group: Group, per_channel: torch.Tensor) -> torch.Tensor:
    """Sum a per-input-channel quantity of the consumer over each unit's columns."""
    return per_channel.double()[group.consumer[2]].sum(dim=1)
