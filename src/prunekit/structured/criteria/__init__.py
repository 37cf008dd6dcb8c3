"""Structured criteria, one file each: importing this package registers them all in
:data:`prunekit.core.registry.CRITERIA` (build one with ``CRITERIA.build(name, options)``).

Each declares the structures it scores (``structures``: LLM MLP channels, attention units and
blocks, CNN filters) and the calibration statistics it needs (``needs``)."""

from prunekit.core.registry import CRITERIA
from prunekit.structured.criteria import cfsp, flap, magnitude, random, taylor  # noqa: F401
from prunekit.structured.criteria.base import LLM_STRUCTURES, STRUCTURES, Criterion, ScoreContext


def scoring(structure: str) -> list[str]:
    """Names of the criteria that score ``structure`` (one of :data:`STRUCTURES`), sorted."""
    return [name for name in CRITERIA.names() if structure in CRITERIA.get(name).structures]


__all__ = ["LLM_STRUCTURES", "STRUCTURES", "Criterion", "ScoreContext", "scoring"]
