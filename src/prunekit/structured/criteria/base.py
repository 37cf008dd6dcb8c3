"""The contract of a structured criterion: one importance score per unit of a coupled group
(:class:`~prunekit.structured.graph.Group`: LLM MLP channels, attention units, blocks; CNN filters),
through one entry point, ``score(group, ctx)``.

A criterion is a config dataclass registered in :data:`prunekit.core.registry.CRITERIA` (one file
each in this package); its fields are its options, checked by the registry before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.stats import ModelStats, check_needs
from prunekit.structured.criteria.block_importance import block_influence
from prunekit.structured.graph import KINDS, Group

LLM_STRUCTURES = (*KINDS, "blocks")  # what prune_structured removes from a decoder LLM
STRUCTURES = (*LLM_STRUCTURES, "filters")  # ... and prune_cnn from a CNN (output channels of conv groups)


@dataclass
class ScoreContext:
    """What a criterion may read besides the group's weights."""

    stats: ModelStats = field(default_factory=ModelStats)
    generator: torch.Generator | None = None


class Criterion:
    """Higher score = more important = kept.

    ``structures`` declares the group kinds :meth:`score` scores: LLM MLP channels and attention units,
    whole blocks and/or CNN filters. ``needs`` declares the statistics :meth:`score` reads for channel
    and head groups (a subset of :data:`prunekit.core.stats.NEEDS`: ``moments``, ``gradients`` reduced
    by ``gradient_reduction``, ``similarity``); ``block_needs`` those it reads for depth pruning. ``standardize`` says whether global allocation compares z-scores per group
    (scores of different layers are not on one scale) or raw scores; ``allocation`` is the default
    allocation of the method; :meth:`block_ratios` gives per-block budgets (allocation "blocks").
    """

    name: ClassVar[str]
    structures: ClassVar[frozenset[str]] = frozenset(LLM_STRUCTURES)
    needs: ClassVar[frozenset[str]] = frozenset()
    gradient_reduction: ClassVar[str] = "mean"
    block_needs: ClassVar[frozenset[str]] = frozenset({"similarity"})
    standardize: ClassVar[bool] = False
    allocation: ClassVar[str] = "uniform"
    bias_compensation: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        owner = f"structured criterion {cls.__name__}"
        check_needs(cls.needs | cls.block_needs, owner, cls.gradient_reduction)
        unknown = sorted(set(cls.structures) - set(STRUCTURES))
        if unknown:
            raise PrunekitError(f"{owner} declares unknown structures {unknown}; known: {', '.join(STRUCTURES)}")
        if set(cls.structures) - {"blocks"} and cls.score is Criterion.score:
            raise PrunekitError(f"{owner} declares structures {sorted(cls.structures)} but does not define score")

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        """Importance of every unit of ``group`` (float64, one per unit). Here: blocks, for depth pruning
        (lower = removed first), by ShortGPT's block influence 1 - E[cos(x_in, x_out)] (see
        :mod:`.block_importance`); a criterion scores its other structures and passes blocks on here."""
        if group.kind != "blocks":
            raise NotImplementedError(f"{type(self).__name__} does not score {group.kind} groups")
        return block_influence(ctx.stats.block_similarity)

    def block_ratios(self, stats: ModelStats, ratio: float, costs: list[float]) -> list[float]:
        """Per-block removal ratios for allocation "blocks" whose parameter-weighted mean is
        ``ratio`` (``costs``: prunable parameters per block). The same ratio everywhere unless a
        criterion knows better."""
        return [ratio] * len(costs)


def consumer_channel_sum(group: Group, per_channel: torch.Tensor) -> torch.Tensor:
    """Sum a per-input-channel quantity of the consumer over each unit's columns."""
    return per_channel.double()[group.consumer.index].sum(dim=1)
