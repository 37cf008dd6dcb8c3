"""Structured criteria, one per file; ``build_criterion(name, **options)`` makes one by name."""

from __future__ import annotations

from prunekit.structured.criteria.base import Criterion, ScoreContext

NAMES = ("magnitude", "l1", "l2", "taylor", "flap", "cfsp", "random")


def build_criterion(name: str, **options) -> Criterion:
    from prunekit.structured.criteria.cfsp import Cfsp
    from prunekit.structured.criteria.flap import Flap
    from prunekit.structured.criteria.magnitude import GroupMagnitude
    from prunekit.structured.criteria.random import RandomScores
    from prunekit.structured.criteria.taylor import Taylor

    table = {"magnitude": GroupMagnitude, "l2": GroupMagnitude, "l1": lambda **o: GroupMagnitude(p=1, **o),
             "taylor": Taylor, "flap": Flap, "cfsp": Cfsp, "random": RandomScores}
    if name not in table:
        raise ValueError(f"method {name!r} is not a structured criterion; choose from {', '.join(NAMES)}")
    try:
        return table[name](**options)
    except TypeError as err:
        raise ValueError(f"bad option for structured method {name!r}: {err}") from None


__all__ = ["NAMES", "Criterion", "ScoreContext", "build_criterion"]
