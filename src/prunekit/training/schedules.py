"""Sparsity schedules: pure functions of the training step.

Every schedule is a small frozen dataclass whose ``__call__(step)`` returns the target sparsity
(fraction of prunable weights that are zero) at that optimizer step. Nothing is stateful, so the
same schedule can be evaluated out of order, plotted, or replayed after a restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prunekit.core.errors import PrunekitError
from prunekit.core.registry import SCHEDULES


def _check_fraction(name: str, value: float, allow_one: bool = False) -> None:
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (0.0 <= value and upper_ok) or math.isnan(value):
        bound = "[0, 1]" if allow_one else "[0, 1)"
        raise PrunekitError(f"{name} must be in {bound}, got {value!r}")


def _check_window(start: int, end: int, frequency: int) -> None:
    if start < 0:
        raise PrunekitError(f"start must be >= 0, got {start!r}")
    if end <= start:
        raise PrunekitError(f"end must be > start ({start}), got {end!r}")
    if frequency < 1:
        raise PrunekitError(f"frequency must be >= 1, got {frequency!r}")


def _quantize(step: int, start: int, end: int, frequency: int) -> int:
    """The last step at which a pruning update happened: start + k*frequency, clipped to end."""
    if step >= end:
        return end
    return start + ((step - start) // frequency) * frequency


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class ConstantSparsity:
    """The same sparsity from ``start`` on (zero before)."""

    sparsity: float
    start: int = 0

    def __post_init__(self) -> None:
        _check_fraction("sparsity", self.sparsity)

    def __call__(self, step: int) -> float:
        return self.sparsity if step >= self.start else 0.0

    @classmethod
    def from_window(cls, sparsity: float, start: int, end: int | None, frequency: int, initial: float):
        return cls(sparsity, start)


@SCHEDULES.register("oneshot")
@dataclass(frozen=True)
class OneShotSparsity:
    """Jump from zero to ``sparsity`` at step ``at`` (prune once, then keep the mask)."""

    sparsity: float
    at: int = 0

    def __post_init__(self) -> None:
        _check_fraction("sparsity", self.sparsity)
        if self.at < 0:
            raise PrunekitError(f"at must be >= 0, got {self.at!r}")

    def __call__(self, step: int) -> float:
        return self.sparsity if step >= self.at else 0.0

    @classmethod
    def from_window(cls, sparsity: float, start: int, end: int | None, frequency: int, initial: float):
        return cls(sparsity, start)


@dataclass(frozen=True)
class _Ramp:
    """A schedule from ``initial`` at ``start`` to ``final`` at ``end``, updated every ``frequency`` steps."""

    initial: float
    final: float
    start: int
    end: int
    frequency: int = 1

    def __post_init__(self) -> None:
        _check_fraction("initial sparsity", self.initial)
        _check_fraction("final sparsity", self.final)
        _check_window(self.start, self.end, self.frequency)

    @classmethod
    def from_window(cls, sparsity: float, start: int, end: int | None, frequency: int, initial: float):
        if end is None:
            raise PrunekitError(f"schedule {cls.name!r} needs an end step")
        return cls(initial, sparsity, start, end, frequency)


@SCHEDULES.register("linear")
@dataclass(frozen=True)
class LinearSparsity(_Ramp):
    """Linear ramp from ``initial`` at ``start`` to ``final`` at ``end``, updated every ``frequency`` steps."""

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 0.0
        t = _quantize(step, self.start, self.end, self.frequency)
        progress = (t - self.start) / (self.end - self.start)
        return self.initial + (self.final - self.initial) * progress


@SCHEDULES.register("cubic", aliases=("agp",))
@dataclass(frozen=True)
class CubicSparsity(_Ramp):
    """Automated gradual pruning (AGP), Zhu & Gupta 2017, "To prune, or not to prune", eq. (1).

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3   for t in {t0, t0 + dt, ..., t0 + n*dt},

    with t0 = ``start``, n*dt = ``end - start`` and dt = ``frequency``. Between updates the sparsity
    holds its last value; before ``start`` nothing is pruned and after ``end`` it stays at s_f.
    The cubic prunes fast while there are many redundant weights and slows down near the target.
    """

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 0.0
        t = _quantize(step, self.start, self.end, self.frequency)
        remaining = 1.0 - (t - self.start) / (self.end - self.start)
        return self.final + (self.initial - self.final) * remaining**3


def imp_sparsities(rounds: int, rate: float) -> list[float]:
    """Sparsity after each round of iterative magnitude pruning (Frankle & Carbin 2019).

    Each round removes ``rate`` of the weights still alive, so after k rounds the sparsity is
    1 - (1 - rate)^k.
    """
    if rounds < 1:
        raise PrunekitError(f"rounds must be >= 1, got {rounds!r}")
    if not 0.0 < rate < 1.0:
        raise PrunekitError(f"rate must be in (0, 1), got {rate!r}")
    return [1.0 - (1.0 - rate) ** k for k in range(1, rounds + 1)]


Schedule = ConstantSparsity | OneShotSparsity | LinearSparsity | CubicSparsity


def make_schedule(kind: str, sparsity: float, start: int = 0, end: int | None = None,
                  frequency: int = 1, initial: float = 0.0) -> Schedule:
    """Build a registered schedule by name (``constant``, ``oneshot``, ``linear``, ``cubic``) from a
    pruning window: ``sparsity`` reached at ``end``, starting at ``start`` (from ``initial``)."""
    return SCHEDULES.get(kind).from_window(sparsity, start, end, frequency, initial)
