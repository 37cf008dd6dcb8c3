"""The contract of a structured criterion: one importance score per unit of a coupled group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from prunekit.structured.groups import Group
from prunekit.structured.stats import Statistics


@dataclass
class ScoreContext:
    """What a criterion may read besides the group's weights."""

    stats: Statistics = field(default_factory=Statistics)
    generator: torch.Generator | None = None


class Criterion:
    """Higher score = more important = kept.

    ``needs`` is a subset of {"activations", "gradients", "similarity"}; ``standardize`` says whether
    global allocation compares z-scores per group (scores of different layers are not on one scale)
    or raw scores; ``allocation`` is the default allocation of the method.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    standardize: ClassVar[bool] = False
    allocation: ClassVar[str] = "uniform"
    bias_compensation: ClassVar[bool] = False

    def score(self, group: Group, ctx: ScoreContext) -> torch.Tensor:
        raise NotImplementedError


def weights(_name, module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight as out x in, bias) of a module, for :meth:`Group.unit_sums`."""
    from prunekit.core.families import weight_view

    return weight_view(module), module.bias


def consumer_channel_sum(group: Group, per_channel: torch.Tensor) -> torch.Tensor:
    """Sum a per-input-channel quantity of the consumer over each unit's columns."""
    return per_channel.double()[group.consumer[2]].sum(dim=1)
