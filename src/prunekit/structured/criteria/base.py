"""The contract of a structured criterion: one importance score per unit of a coupled group.

A criterion is a config dataclass registered in :data:`prunekit.core.registry.CRITERIA` (one file
each in this package); its fields are its options, checked by the registry before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.stats import ModelStats, check_needs
from prunekit.structured.groups import KINDS, Group

if TYPE_CHECKING:
    from prunekit.structured.cnn import CnnGroup

LLM_STRUCTURES = (*KINDS, "blocks")  # what prune_structured removes from a decoder LLM
STRUCTURES = (*LLM_STRUCTURES, "filters")  # ... and prune_cnn from a CNN (output channels of conv groups)


@dataclass
class ScoreContext:
    """What a criterion may read besides the group's weights."""

    stats: ModelStats = field(default_factory=ModelStats)
    generator: torch.Generator | None = None


class Criterion:
    """Higher score = more important = kept.

    ``structures`` declares what the criterion scores: LLM MLP channels and attention units
    (:meth:`score`), whole blocks (:meth:`block_scores`) and/or CNN filters (:meth:`score_filters`).
    ``needs`` declares the statistics :meth:`score` reads (a subset of
    :data:`prunekit.core.stats.NEEDS`: ``moments``, ``gradients`` reduced by
    ``gradient_reduction``, ``similarity``); ``block_needs`` those :meth:`block_scores` reads for
    depth pruning. ``standardize`` says whether global allocation compares z-scores per group
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
        if "filters" in cls.structures and cls.score_filters is Criterion.score_filters:
            raise PrunekitError(f"{owner} declares structure 'filters' but does not define score_filters")

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        raise NotImplementedError

    def score_filters(self, model: nn.Module, group: CnnGroup, ctx: ScoreContext) -> torch.Tensor:
        """Importance of every channel of a CNN channel group (structure ``filters``); criteria that
        declare ``filters`` in :attr:`structures` define it."""
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


def consumer_channel_sum(group: Group, per_channel: torch.Tensor) -> torch.Tensor:
    """Sum a per-input-channel quantity of the consumer over each unit's columns."""
    return per_channel.double()[group.consumer[2]].sum(dim=1)
