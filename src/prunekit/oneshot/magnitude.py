"""Magnitude pruning: remove the weights with the smallest |W| (per layer, per row, or globally
with ``allocation="global"``)."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.core.registry import METHODS
from prunekit.oneshot.base import Method


@METHODS.register("magnitude")
@dataclass
class Magnitude(Method):
    """|W|: the smallest weights matter least (Han et al. 2015)."""

    def scores(self, weight, ctx):
        return weight.detach().abs()
