"""Iterative magnitude pruning with weight rewinding (lottery tickets).

Frankle & Carbin 2019, "The Lottery Ticket Hypothesis": train, prune p% of the surviving weights
by magnitude, reset the survivors to their values at initialization, retrain; repeat k rounds.
Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis": for deeper
networks rewind to an early iteration t instead of to initialization ("weight rewinding").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.train import Batch, Callback, TrainState
from prunekit.training.pruner import Pruner
from prunekit.training.schedules import ConstantSparsity, imp_sparsities


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def rewind(model: nn.Module, saved: dict[str, torch.Tensor], pruner: Pruner | None = None) -> None:
    """Load ``saved`` into ``model`` in place, then zero what ``pruner``'s masks prune."""
    model.load_state_dict(saved)
    if pruner is not None:
        pruner.apply_masks()


class IterativeMagnitudePruning(Callback):
    """State of an IMP run: the rewind point, the round counter and the pruner holding the masks.

    It is a training-loop callback (it saves the rewind point after step ``rewind_step``)::

        imp = IterativeMagnitudePruning(model, rounds=5, rate=0.2, rewind_step=200)
        train(model, data, config, callbacks=[imp.pruner, imp])   # dense run, saves step 200
        for _ in range(imp.rounds):
            imp.next_round()                                      # prune + rewind
            train(model, data, config, callbacks=[imp.pruner])

    In another loop, call :meth:`on_step` after every optimizer step of the dense run.

    ``rewind_step=0`` rewinds to the initialization (the weights when IMP was created).
    ``sparsities`` overrides the geometric 1 - (1 - rate)^k sequence.
    """

    def __init__(self, model: nn.Module, rounds: int = 5, rate: float = 0.2, rewind_step: int = 0,
                 scope: str = "layer", floor: float = 0.0, sparsities: Sequence[float] | None = None,
                 **pruner_kwargs):
        if rewind_step < 0:
            raise PrunekitError(f"rewind_step must be >= 0, got {rewind_step!r}")
        self.sparsities = list(sparsities) if sparsities is not None else imp_sparsities(rounds, rate)
        if any(b <= a for a, b in zip(self.sparsities, self.sparsities[1:])):
            raise PrunekitError(f"IMP sparsities must increase, got {self.sparsities!r}")
        self.model = model
        self.rewind_step = rewind_step
        self.pruner = Pruner(model, ConstantSparsity(0.0), "magnitude", scope, floor, **pruner_kwargs)
        self.rewind_point = snapshot(model) if rewind_step == 0 else None
        self.round = 0

    @property
    def rounds(self) -> int:
        return len(self.sparsities)

    def after_step(self, state: TrainState, batch: Batch) -> None:
        self.on_step(batch.step)

    def on_step(self, step: int) -> None:
        """Call after optimizer step ``step`` of the dense run: saves the weights after ``rewind_step`` steps."""
        if self.rewind_point is None and step + 1 == self.rewind_step:
            self.rewind_point = snapshot(self.model)

    def next_round(self) -> float:
        """Prune the trained weights to the next sparsity, then rewind the survivors. Returns the sparsity."""
        if self.round >= self.rounds:
            raise IndexError(f"all {self.rounds} IMP rounds are done")
        if self.rewind_point is None:
            raise RuntimeError(f"no rewind point: the dense run never reached step {self.rewind_step}")
        sparsity = self.sparsities[self.round]
        self.pruner.schedule = ConstantSparsity(sparsity)
        self.pruner.prune_to(sparsity)
        rewind(self.model, self.rewind_point, self.pruner)
        self.round += 1
        return sparsity


def run_imp(model: nn.Module, train_fn: Callable[[nn.Module, list[Callback]], None],
            eval_fn: Callable[[nn.Module], float], rounds: int = 5, rate: float = 0.2, rewind_step: int = 0,
            **kwargs) -> list[tuple[float, float]]:
    """Whole IMP loop: dense run, then ``rounds`` of prune-rewind-retrain.

    ``train_fn(model, callbacks)`` trains one round with those training-loop callbacks (e.g.
    ``lambda m, cbs: train(m, (x, y), config, cbs)``); ``eval_fn(model)`` scores it.
    Returns ``[(sparsity, score), ...]`` starting with the dense model at sparsity 0.
    """
    imp = IterativeMagnitudePruning(model, rounds, rate, rewind_step, **kwargs)
    train_fn(model, [imp.pruner, imp])
    results = [(0.0, eval_fn(model))]
    for _ in range(imp.rounds):
        sparsity = imp.next_round()
        train_fn(model, [imp.pruner])
        results.append((sparsity, eval_fn(model)))
    return results
