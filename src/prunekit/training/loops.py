"""A small train / evaluate loop on in-memory tensors (the whole dataset fits in RAM)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(params, name: str = "sgd", lr: float = 0.05, momentum: float = 0.9,
                   weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0,
                               weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def cosine_lr(step: int, total: int, warmup: int = 0) -> float:
    """Multiplier for the base learning rate: linear warm-up, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one epoch (the last partial batch is dropped)."""
    return max(1, n // batch_size)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: float = 1.0, batch_size: int = 128,
          optimizer: torch.optim.Optimizer | None = None, lr: float = 0.05, lr_schedule: str = "cosine",
          warmup: int = 0, pruner=None, seed: int = 0, step_offset: int = 0,
          on_step: Callable[[int], None] | None = None, quiet: bool = True, desc: str = "train") -> int:
    """Train ``model`` with cross-entropy for ``epochs`` (may be fractional) passes over (x, y).

    ``pruner.step(global_step)`` runs after every optimizer step, then ``on_step(global_step)``;
    ``global_step`` starts at ``step_offset``. Returns the global step after the last update.
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; expected cosine or constant")
    own_optimizer = optimizer is None
    if own_optimizer:
        optimizer = make_optimizer(model.parameters(), lr=lr)
    if pruner is not None:
        pruner.attach(optimizer)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    per_epoch = steps_per_epoch(len(y), batch_size)
    total = max(1, round(epochs * per_epoch))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    order = torch.randperm(len(y), generator=gen)
    for i in tqdm(range(total), desc=desc, disable=quiet, mininterval=2.0):
        j = i % per_epoch
        if i > 0 and j == 0:
            order = torch.randperm(len(y), generator=gen)
        idx = order[j * batch_size: (j + 1) * batch_size]
        scale = cosine_lr(i, total, warmup) if lr_schedule == "cosine" else 1.0
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * scale
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step = step_offset + i
        if pruner is not None:
            pruner.step(step)
        if on_step is not None:
            on_step(step)
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base
    if pruner is not None and own_optimizer:
        pruner.detach(optimizer)
    return step_offset + total


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy in [0, 1]."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model(x[i: i + batch_size]).argmax(1) == y[i: i + batch_size]).sum())
    model.train(was_training)
    return correct / len(y)
