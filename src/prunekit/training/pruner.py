"""A pruner that plugs into any PyTorch training loop.

In prunekit's loop it is a callback: ``train(model, (x, y), config, callbacks=[pruner])``.
In your own loop:

    pruner = Pruner(model, CubicSparsity(0.0, 0.9, start=100, end=2000, frequency=50))
    pruner.attach(optimizer)
    for step, (x, y) in enumerate(batches):
        loss = criterion(model(x), y); optimizer.zero_grad(); loss.backward(); optimizer.step()
        pruner.step(step)

Masks follow the one convention of :mod:`prunekit.core.masks`: ``True`` = pruned.
Three things keep a pruned weight at zero: a gradient hook zeroes its gradient,
the optimizer state (momentum, Adam moments) of pruned entries is zeroed when the mask changes,
and the mask is re-applied after every step (weight decay or a foreign update cannot revive it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from prunekit.core.errors import PrunekitError, UnknownKey
from prunekit.core.train import Batch, Callback, TrainState
from prunekit.training.criteria import check_criterion, compute_masks, needs_data, needs_labels
from prunekit.training.data_criteria import data_scores
from prunekit.training.schedules import ConstantSparsity

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg",
               "acc_delta", "sum")


def prunable_weights(model: nn.Module, skip: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """Weights of every Linear/Conv layer, by module name (``features.0``), minus the ``skip`` names."""
    skip = set(skip)
    return {name: m.weight for name, m in model.named_modules()
            if isinstance(m, PRUNABLE) and name not in skip}


class Pruner(Callback):
    """Keeps ``model``'s prunable weights at the sparsity ``schedule(step)`` prescribes.

    As a training-loop callback it attaches the loop's optimizer at the start, calls
    :meth:`step` after every optimizer step and detaches the optimizer at the end; its masks and
    target are saved in checkpoints under ``pruner``.

    Args:
        model: any module; its Linear/Conv weights are pruned (or those named in ``targets``).
        schedule: a callable step -> sparsity (see :mod:`prunekit.training.schedules`).
        criterion: any one-shot method that does not update weights (``magnitude``, ``random``, or a
            data-aware one such as ``wanda``, ``gblm``: see :mod:`prunekit.training.data_criteria`,
            which needs ``calibration``).
        scope: ``layer`` (same sparsity everywhere) or ``global`` (one threshold).
        floor: with ``scope='global'``, minimum fraction of each layer that is kept.
        targets: module names to prune; default all Linear/Conv layers.
        skip: module names to leave dense (e.g. the classifier head).
        calibration: inputs ``x`` (``wanda``) or ``(x, y)`` (a criterion that reads gradients, ``gblm``)
            scored at every mask update.
        loss_fn: ``loss_fn(logits, y)`` for the gradients; default cross-entropy.
    """

    def __init__(self, model: nn.Module, schedule: Callable[[int], float], criterion: str = "magnitude",
                 scope: str = "layer", floor: float = 0.0, targets: Iterable[str] | None = None,
                 skip: Iterable[str] = (), seed: int = 0, calibration=None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        check_criterion(criterion)
        if needs_data(criterion) and calibration is None:
            raise PrunekitError(f"criterion {criterion!r} scores weights on data: pass calibration=x "
                                "(or (x, y) for a criterion that reads gradients)")
        if needs_labels(criterion) and not isinstance(calibration, (tuple, list)):
            raise PrunekitError(f"criterion {criterion!r} needs labelled calibration data: calibration=(x, y)")
        weights = prunable_weights(model, skip)
        if targets is not None:
            targets = list(targets)
            missing = [t for t in targets if t not in weights]
            if missing:
                raise PrunekitError(f"no prunable Linear/Conv layer named {missing[0]!r}")
            weights = {t: weights[t] for t in targets}
        if not weights:
            raise PrunekitError(f"{type(model).__name__} has no Linear/Conv weight to prune")
        self.model = model
        self.schedule = schedule
        self.criterion = criterion
        self.scope = scope
        self.floor = floor
        self.weights = weights
        self.calibration = calibration
        self.loss_fn = loss_fn
        named = dict(model.named_modules())
        self.modules = {n: named[n] for n in weights}
        self.masks = {n: torch.zeros_like(w, dtype=torch.bool) for n, w in weights.items()}  # True = pruned
        self.target = 0.0
        self.optimizers: list[torch.optim.Optimizer] = []
        self.generator = torch.Generator().manual_seed(seed)
        self._hooks = [w.register_hook(self._grad_hook(n)) for n, w in weights.items()]

    key = "pruner"

    def _grad_hook(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * (~self.masks[name]).to(grad.dtype)
        return hook

    def attach(self, optimizer: torch.optim.Optimizer) -> Pruner:
        """Also zero this optimizer's state for pruned entries whenever the masks change."""
        if optimizer not in self.optimizers:
            self.optimizers.append(optimizer)
        return self

    def detach(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop tracking ``optimizer`` (e.g. when a training phase ends)."""
        self.optimizers = [o for o in self.optimizers if o is not optimizer]

    def step(self, step: int) -> bool:
        """Call after ``optimizer.step()``: update masks if the schedule moved, re-apply them.

        Returns ``True`` when the masks changed at this step.
        """
        target = float(self.schedule(step))
        changed = target != self.target
        if changed:
            self.prune_to(target)
        else:
            self.apply_masks()
        return changed

    def on_start(self, state: TrainState) -> None:
        self.attach(state.optimizer)

    def after_step(self, state: TrainState, batch: Batch) -> None:
        self.step(batch.step)

    def on_end(self, state: TrainState) -> None:
        self.detach(state.optimizer)

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Recompute masks at ``sparsity`` from the current weights and apply them everywhere."""
        scores = None
        if needs_data(self.criterion):
            scores = data_scores(self.model, self.modules, self.criterion, self.calibration, self.loss_fn)
        self.masks = compute_masks(dict(self.weights), sparsity, self.criterion, self.scope, self.floor,
                                   self.masks, self.generator, scores)
        self.masks = {n: m.to(self.weights[n].device) for n, m in self.masks.items()}
        self.target = sparsity
        self.apply_masks()
        self.zero_optimizer_state()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every pruned weight (and its gradient, if one is stored)."""
        for name, w in self.weights.items():
            kept = ~self.masks[name]
            w.mul_(kept)
            if w.grad is not None:
                w.grad.mul_(kept)

    @torch.no_grad()
    def zero_optimizer_state(self) -> None:
        """Zero momentum / Adam moments of pruned entries so they cannot push weights back."""
        for opt in self.optimizers:
            for name, w in self.weights.items():
                state = opt.state.get(w, {})
                for key in _STATE_KEYS:
                    buf = state.get(key)
                    if isinstance(buf, torch.Tensor) and buf.shape == w.shape:
                        buf.mul_(~self.masks[name])

    def sparsity(self) -> float:
        """Measured fraction of zeros in the pruned weights (not just the mask target)."""
        zeros = sum(int((w == 0).sum()) for w in self.weights.values())
        return zeros / sum(w.numel() for w in self.weights.values())

    def layer_sparsity(self) -> dict[str, float]:
        """Fraction of pruned entries per layer, from the masks."""
        return {n: m.float().mean().item() for n, m in self.masks.items()}

    def nonzeros(self) -> int:
        """Kept weights in the pruned layers."""
        return sum(m.numel() - int(m.sum()) for m in self.masks.values())

    def state_dict(self) -> dict[str, object]:
        """The masks (True = pruned) and the current target sparsity."""
        return {"masks": {n: m.clone() for n, m in self.masks.items()}, "target": self.target}

    def load_state_dict(self, state: dict[str, object]) -> None:
        masks = state["masks"]
        unknown = set(masks) - set(self.weights)
        if unknown:
            raise UnknownKey(f"mask for unknown layer {min(unknown)!r}")
        self.masks = {n: masks[n].to(torch.bool) for n in self.weights}
        self.target = float(state["target"])
        self.apply_masks()

    def remove(self) -> None:
        """Detach the gradient hooks; the weights stay as they are."""
        for h in self._hooks:
            h.remove()
        self._hooks = []


def prune_once(model: nn.Module, sparsity: float, criterion: str = "magnitude", scope: str = "layer",
               floor: float = 0.0, seed: int = 0, **kwargs) -> Pruner:
    """One-shot pruning: a :class:`Pruner` with a constant schedule, already applied."""
    pruner = Pruner(model, ConstantSparsity(sparsity), criterion, scope, floor, seed=seed, **kwargs)
    pruner.step(0)
    return pruner
