"""One training loop with callbacks, on in-memory tensors (the whole dataset fits in RAM).

    config = TrainConfig(epochs=3, batch_size=128, lr=0.05)
    train(model, (x, y), config, callbacks=[pruner, Progress("train")])
    accuracy(model, x_test, y_test)

What changes between uses is a callback, never a copy of the loop: the pruning schedule
(:class:`prunekit.training.pruner.Pruner`), knowledge distillation (:class:`Distillation`), training
dynamics for data scores (:class:`prunekit.data.dynamics.TrainingDynamics`), checkpoints
(:class:`Checkpoint`), a progress bar (:class:`Progress`), a language-model loss
(:class:`prunekit.training.recovery.CausalLMLoss`), a penalty on the distance to the starting
weights (:class:`DeltaL2`).

One step: set the learning rate of step ``s`` (a pure function of ``s``), compute the loss (the
first callback whose :meth:`Callback.loss` returns one, else cross-entropy of ``model(x)``, plus
every callback's :meth:`Callback.penalty`), zero
the gradients, backward, clip the global gradient norm (if configured), ``optimizer.step()``, then
every callback's :meth:`Callback.after_step` in list order. An epoch is one pass over the examples
in an order drawn from the loop's own generator (seeded by ``config.seed``), so the same seed gives
the same steps whatever else uses the global RNG.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core.checkpoint import compare_config, first_line, load_state, save_state_atomic
from prunekit.core.errors import PrunekitError
from prunekit.core.registry import check_fields, option

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("cosine", "constant", "one-cycle")


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train; every field is checked (type and range) when the config is made."""

    epochs: float = option(1.0, "passes over the data, may be fractional (ignored when steps is set)", above=0)
    steps: int | None = option(None, "optimizer steps of the whole run (overrides epochs)", min=1)
    batch_size: int = option(128, "examples per optimizer step", min=1)
    drop_last: bool = option(True, "an epoch drops its last partial batch (False: ends with a short batch)")
    shuffle: bool = option(True, "a new random order every epoch (False: the data's own order)")
    optimizer: str = option("sgd", "sgd (Nesterov momentum when momentum > 0) or adamw", choices=OPTIMIZERS)
    lr: float = option(0.05, "base (peak) learning rate", above=0)
    momentum: float = option(0.9, "SGD momentum (one-cycle cycles it between 0.85 and 0.95)", min=0, below=1)
    weight_decay: float = option(5e-4, "L2 penalty (SGD) or decoupled weight decay (AdamW)", min=0)
    schedule: str = option("cosine", "learning-rate schedule: cosine (after warmup), constant, one-cycle",
                           choices=LR_SCHEDULES)
    warmup: int = option(0, "steps of linear warm-up before the cosine decay", min=0)
    pct_start: float = option(0.15, "fraction of the steps one-cycle spends warming up", above=0, below=1)
    max_grad_norm: float | None = option(None, "clip the global gradient norm to this before each step", above=0)
    seed: int = option(0, "seed of the data order")

    def __post_init__(self):
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in check_fields(type(self), values, "training", noun="setting").items():
            object.__setattr__(self, key, value)  # ints given for float settings become floats

    def steps_per_epoch(self, n: int) -> int:
        """Optimizer steps in one pass over ``n`` examples."""
        if self.drop_last:
            return max(1, n // self.batch_size)
        return math.ceil(n / self.batch_size)

    def total_steps(self, n: int) -> int:
        """Optimizer steps of the whole run on ``n`` examples: ``steps``, or ``epochs`` passes (at least 1)."""
        if self.steps is not None:
            return self.steps
        return max(1, round(self.epochs * self.steps_per_epoch(n)))


# ---------------------------------------------------------------------------------- schedules

def cosine_lr(step: int, total: int, warmup: int = 0) -> float:
    """Multiplier of the base learning rate: linear warm-up over ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def one_cycle(step: int, total: int, lr: float, pct_start: float = 0.15) -> tuple[float, float]:
    """(learning rate, momentum) at ``step`` of the one-cycle policy (Smith & Topin 2019, "Super-Convergence").

    Cosine warm-up from ``lr / 25`` to ``lr`` over the first ``pct_start`` of the steps while the
    momentum falls from 0.95 to 0.85, then cosine annealing to ``lr / 25e4`` while it rises back.
    The arithmetic is that of ``torch.optim.lr_scheduler.OneCycleLR`` (same floats, step for step).
    """
    initial = lr / 25.0
    warm_end = float(pct_start * total) - 1
    if step <= warm_end and warm_end > 0:
        pct = step / warm_end
        return _cos_anneal(initial, lr, pct), _cos_anneal(0.95, 0.85, pct)
    pct = (step - warm_end) / (total - 1 - warm_end)
    return _cos_anneal(lr, initial / 1e4, pct), _cos_anneal(0.85, 0.95, pct)


def make_optimizer(params: Sequence[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov when ``momentum > 0``) or AdamW over ``params``, from ``config``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _set_hyperparameters(optimizer: torch.optim.Optimizer, config: TrainConfig, base_lrs: list[float],
                         step: int, total: int) -> None:
    for group, base in zip(optimizer.param_groups, base_lrs):
        if config.schedule == "constant":
            group["lr"] = base
        elif config.schedule == "cosine":
            group["lr"] = base * cosine_lr(step, total, config.warmup)
        else:
            group["lr"], momentum = one_cycle(step, total, base, config.pct_start)
            if "betas" in group:
                group["betas"] = (momentum, *group["betas"][1:])
            else:
                group["momentum"] = momentum


# ---------------------------------------------------------------------------------- the loop

@dataclass
class Batch:
    """One optimizer step's examples; ``logits`` and ``loss`` are filled in by the forward pass."""

    index: torch.Tensor  # dataset indices of the examples
    x: torch.Tensor
    y: torch.Tensor | None
    step: int  # index of this optimizer step in the run (0-based)
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None


@dataclass
class TrainState:
    """What callbacks see: the model, its optimizer, the config and how far training is."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    total: int  # optimizer steps of the whole run
    n_examples: int  # examples in one pass (the subset, when one is given)
    generator: torch.Generator
    callbacks: list[Callback] = field(default_factory=list)
    step: int = 0  # optimizer steps taken so far
    epoch: int = 0  # index of the current pass over the data

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the current epoch: weights, optimizer, data order, counters,
        and the state of every callback that has a ``key``."""
        state = {"model": self.model.state_dict(), "opt": self.optimizer.state_dict(),
                 "gen": self.generator.get_state(), "epoch": self.epoch, "done": self.step}
        state.update({cb.key: cb.state_dict() for cb in self.callbacks if cb.key})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` saved at the end of epoch ``state['epoch']``."""
        epoch, done = state["epoch"], state["done"]
        if not (isinstance(epoch, int) and isinstance(done, int) and epoch >= 0 and 0 <= done <= self.total):
            raise PrunekitError(f"epoch {epoch!r} / done {done!r} out of range")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["opt"])
        self.generator.set_state(state["gen"])
        for cb in self.callbacks:
            if cb.key:
                cb.load_state_dict(state[cb.key])
        self.epoch, self.step = epoch + 1, done


class Callback:
    """Hooks into :func:`train`; every hook is optional. Hooks run in the order of the callbacks list.

    ``key`` names the callback's entry in a checkpoint; a callback with state to keep sets it and
    implements :meth:`state_dict` / :meth:`load_state_dict`.
    """

    key: ClassVar[str | None] = None

    def on_start(self, state: TrainState) -> None:
        """Before the first step (a :class:`Checkpoint` restores a saved run here)."""

    def on_epoch_start(self, state: TrainState) -> None:
        """At the start of each pass over the data, after its order is drawn."""

    def loss(self, state: TrainState, batch: Batch) -> torch.Tensor | None:
        """The loss of ``batch`` instead of cross-entropy (set ``batch.logits`` if you compute them), or ``None``."""
        return None

    def penalty(self, state: TrainState, batch: Batch) -> torch.Tensor | None:
        """A term added to the loss of every step (a regulariser), or ``None``."""
        return None

    def after_step(self, state: TrainState, batch: Batch) -> None:
        """After ``optimizer.step()`` of step ``batch.step``; ``state.step`` already counts it."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After the last step of each pass (also a partial last pass); the model is put back in train mode."""

    def on_end(self, state: TrainState) -> None:
        """When the loop ends, normally or by an exception (like ``finally``)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def _subset(indices: Sequence[int] | np.ndarray | torch.Tensor | None, n: int) -> torch.Tensor:
    if indices is None:
        return torch.arange(n)
    index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    if index.ndim != 1 or len(index) == 0:
        raise PrunekitError("cannot train on an empty subset")
    if int(index.min()) < 0 or int(index.max()) >= n:
        bad = int(index.min()) if int(index.min()) < 0 else int(index.max())
        raise PrunekitError(f"subset index {bad} is out of range [0, {n})")
    return index


def _loss(state: TrainState, batch: Batch) -> torch.Tensor:
    loss = next((value for cb in state.callbacks if (value := cb.loss(state, batch)) is not None), None)
    if loss is None:
        batch.logits = state.model(batch.x)
        loss = F.cross_entropy(batch.logits, batch.y)
    for cb in state.callbacks:
        extra = cb.penalty(state, batch)
        if extra is not None:
            loss = loss + extra
    return loss


def train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor | None], config: TrainConfig | None = None,
          callbacks: Sequence[Callback] = (), indices: Sequence[int] | np.ndarray | torch.Tensor | None = None
          ) -> int:
    """Train ``model`` on ``data = (x, y)`` (``y`` may be ``None`` when a callback gives the loss).

    ``indices`` restricts training to those examples (dataset indices, as the callbacks see them).
    The optimizer (``config.optimizer``) covers the parameters that require gradients. Returns the
    number of optimizer steps taken (``config.total_steps`` of the examples, unless a checkpoint
    says the run is already done).
    """
    config = config or TrainConfig()
    x, y = data
    index = _subset(indices, len(x))
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    state = TrainState(model, optimizer, config, config.total_steps(len(index)), len(index),
                       torch.Generator().manual_seed(config.seed), list(callbacks))
    per_epoch, size = config.steps_per_epoch(len(index)), config.batch_size
    model.train()
    try:
        for cb in state.callbacks:
            cb.on_start(state)
        while state.step < state.total:
            order = index[torch.randperm(len(index), generator=state.generator)] if config.shuffle else index
            for cb in state.callbacks:
                cb.on_epoch_start(state)
            for j in range(per_epoch):
                if state.step == state.total:
                    break
                idx = order[j * size: (j + 1) * size]
                batch = Batch(idx, x[idx], None if y is None else y[idx], state.step)
                _set_hyperparameters(optimizer, config, base_lrs, state.step, state.total)
                batch.loss = _loss(state, batch)
                optimizer.zero_grad(set_to_none=True)
                batch.loss.backward()
                if config.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                state.step += 1
                for cb in state.callbacks:
                    cb.after_step(state, batch)
            for cb in state.callbacks:
                cb.on_epoch_end(state)
                model.train()
            state.epoch += 1
    finally:
        for cb in state.callbacks:
            cb.on_end(state)
    return state.step


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy in [0, 1], in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    correct = sum(int((model(x[i: i + batch_size]).argmax(1) == y[i: i + batch_size]).sum())
                  for i in range(0, len(y), batch_size))
    model.train(was_training)
    return correct / len(y)


# ---------------------------------------------------------------------------------- callbacks

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
            alpha: float) -> torch.Tensor:
    """Hinton, Vinyals & Dean (2015) distillation loss, the soft term scaled by ``T^2``:

    ``(1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``.
    """
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1), log_target=True, reduction="batchmean")
    return (1 - alpha) * hard + alpha * temperature**2 * soft


class Distillation(Callback):
    """Knowledge distillation: the loss is :func:`kd_loss` against a teacher.

    ``teacher`` is either a tensor of logits aligned with the dataset (row ``i`` = example ``i``,
    e.g. computed once by a teacher trained on the full data) or a module run on each batch
    without gradients, in eval mode.
    """

    def __init__(self, teacher: torch.Tensor | nn.Module, temperature: float = 4.0, alpha: float = 0.5):
        if not temperature > 0:
            raise PrunekitError(f"KD temperature must be > 0, got {temperature!r}")
        if not 0 <= alpha <= 1:
            raise PrunekitError(f"KD alpha must be in [0, 1], got {alpha!r}")
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha

    def _teacher_logits(self, batch: Batch) -> torch.Tensor:
        if isinstance(self.teacher, torch.Tensor):
            return self.teacher[batch.index]
        was_training = self.teacher.training
        self.teacher.eval()
        with torch.no_grad():
            logits = self.teacher(batch.x)
        self.teacher.train(was_training)
        return logits

    def loss(self, state: TrainState, batch: Batch) -> torch.Tensor:
        batch.logits = state.model(batch.x)
        return kd_loss(batch.logits, self._teacher_logits(batch), batch.y, self.temperature, self.alpha)


class DeltaL2(Callback):
    """An L2 penalty on the distance to the starting weights, ``strength * sum ||W - W_start||^2`` over
    the parameters that train (those that require gradients when training starts).

    Fine-tuning with it keeps the delta to the base model small (L2-SP, Li et al. 2018; DAREx-L2 in
    Deng et al. 2025, "DARE the Extreme", fine-tunes with it so that DARE's random drop holds at
    large drop rates). :attr:`last` is the penalty of the latest step.
    """

    def __init__(self, strength: float):
        if not (isinstance(strength, (int, float)) and not isinstance(strength, bool) and strength >= 0
                and math.isfinite(strength)):
            raise PrunekitError(f"L2 strength must be a finite number >= 0, got {strength!r}")
        self.strength, self.start, self.last = float(strength), [], 0.0

    def on_start(self, state: TrainState) -> None:  # put it before a Checkpoint: the start is the run's start
        self.start = [(p, p.detach().clone()) for p in state.model.parameters() if p.requires_grad]

    def penalty(self, state: TrainState, batch: Batch) -> torch.Tensor | None:
        if not self.start or not self.strength:
            return None
        total = self.strength * sum((p - p0).pow(2).sum() for p, p0 in self.start)
        self.last = float(total.detach())
        return total


class Hooks(Callback):
    """A callback from plain functions: ``after_step(step)`` and ``on_epoch_end(epoch, model)``."""

    def __init__(self, after_step: Callable[[int], None] | None = None,
                 on_epoch_end: Callable[[int, nn.Module], None] | None = None):
        self._after_step, self._on_epoch_end = after_step, on_epoch_end

    def after_step(self, state: TrainState, batch: Batch) -> None:
        if self._after_step is not None:
            self._after_step(batch.step)

    def on_epoch_end(self, state: TrainState) -> None:
        if self._on_epoch_end is not None:
            self._on_epoch_end(state.epoch, state.model)


class Progress(Callback):
    """A tqdm bar over the optimizer steps (it starts at the resumed step after a :class:`Checkpoint`)."""

    def __init__(self, desc: str = "train", leave: bool = False):
        self.desc, self.leave, self.bar = desc, leave, None

    def on_epoch_start(self, state: TrainState) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.total, initial=state.step, desc=self.desc, leave=self.leave, mininterval=1.0)

    def after_step(self, state: TrainState, batch: Batch) -> None:
        self.bar.update(1)

    def on_end(self, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Checkpoint(Callback):
    """Save the whole training state after every epoch to ``path``; a rerun resumes from it.

    The file is a :mod:`prunekit.core.checkpoint` file (safetensors + JSON, reading it never runs
    code), written atomically. ``run`` identifies the run (settings, data fingerprints); a checkpoint
    recorded for another ``run`` is refused with one line naming the first setting that differs.
    Put it last in the callbacks list, so that it saves after the other callbacks' epoch-end work.
    """

    def __init__(self, path: str | Path, run: Mapping[str, Any] | None = None):
        self.path, self.run = Path(path), None if run is None else dict(run)

    def on_start(self, state: TrainState) -> None:
        if self.run is None:
            self.run = {**dataclasses.asdict(state.config), "n_examples": state.n_examples}
        if self.path.is_file():
            self._resume(state)

    def _resume(self, state: TrainState) -> None:
        saved = load_state(self.path)  # safetensors + JSON: reading it never runs code
        where = f"checkpoint {str(self.path)!r}"
        recorded = saved.get("run")
        if not isinstance(recorded, dict):
            raise PrunekitError(f"{where} records no training run; delete it to start over")
        diff = compare_config(recorded, self.run)
        if diff is not None:
            key, old, new = diff
            raise PrunekitError(f"{where} belongs to another training run ({key}={old!r}, this run has "
                                f"{key}={new!r}); delete it to start over")
        try:
            state.load_state_dict(saved)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise PrunekitError(f"{where} does not fit this run ({first_line(exc)}); delete it to start over") from None

    def on_epoch_end(self, state: TrainState) -> None:
        save_state_atomic(self.path, {**state.state_dict(), "run": self.run})
