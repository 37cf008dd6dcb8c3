"""The training step of a recipe (``kind: training``): train a small CNN/ResNet on Fashion-MNIST or MNIST
while pruning it (gradual schedules, one-shot + recovery, iterative magnitude pruning).

``prunekit train`` builds its flags from these fields (``--prune-start`` for ``prune_start``) and reads
``--recipe`` files holding one training step; every value is checked by the registry's checker before
any training, and the checks across fields are in :meth:`TrainingStep.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.core.errors import PrunekitError
from prunekit.core.recipe import Step
from prunekit.core.registry import SCHEDULES, STEPS, option

TRAINING_METHODS = ("dense", "gradual", "oneshot", "imp")


def weight_criteria() -> tuple[str, ...]:
    """One-shot methods that score weights without updating them: the criteria a pruner can use."""
    from prunekit.training.criteria import criteria

    return criteria()


@STEPS.register("training")
@dataclass
class TrainingStep(Step):
    """Train and prune a small CNN or ResNet on Fashion-MNIST or MNIST."""

    key_aliases = {"calibration": "calibration_examples"}

    model: str = option("cnn", "cnn (SmallCNN) or resnet", choices=("cnn", "resnet"))
    depth: int = option(8, "ResNet depth 6n + 2 (8, 14, 20, ...)", min=8)
    width: int | None = option(None, "channels of the first layer (default: 32 for cnn, 16 for resnet)", min=1)
    dataset: str = option("fashion-mnist", "fashion-mnist or mnist", choices=("fashion-mnist", "mnist"))
    epochs: float = option(1.0, "training epochs (may be fractional)", above=0)
    batch_size: int = option(128, "examples per optimizer step", min=1)
    lr: float = option(0.05, "peak learning rate", above=0)
    optimizer: str = option("sgd", "sgd (Nesterov momentum) or adamw", choices=("sgd", "adamw"))
    method: str = option("dense", "dense | gradual (schedule) | oneshot (+ recovery) | imp (lottery tickets)",
                         choices=TRAINING_METHODS)
    sparsity: float = option(0.9, "fraction of prunable weights removed at the end", min=0, below=1)
    schedule: str = option("cubic", "gradual: a registered schedule (cubic = AGP, linear, constant, oneshot)")
    prune_start: float = option(0.1, "gradual: fraction of training when pruning starts", min=0, below=1)
    prune_end: float = option(0.6, "gradual: fraction of training when the final sparsity is reached", above=0, max=1)
    frequency: int = option(10, "gradual: optimizer steps between mask updates", min=1)
    criterion: str = option("magnitude", "importance of a weight: a one-shot method without weight update")
    scope: str = option("layer", "layer (same sparsity per layer) or global (one threshold)",
                        choices=("layer", "global"))
    floor: float = option(0.0, "global: every layer keeps at least this fraction", min=0, max=1)
    rounds: int = option(3, "imp: pruning rounds", min=1)
    rate: float | None = option(None, "imp: fraction of the remaining weights pruned per round (default: reach "
                                "sparsity in rounds)", above=0, below=1)
    rewind_step: int = option(0, "imp: the step whose weights each round rewinds to", min=0)
    recovery: str = option("none", "oneshot: none, finetune or perp (biases, norms and masked LoRA)",
                           choices=("none", "finetune", "perp"))
    recovery_epochs: float = option(0.5, "oneshot: recovery epochs", above=0)
    recovery_lr: float | None = option(None, "oneshot: recovery learning rate (default: lr / 5, PERP 1e-3)", above=0)
    lora_rank: int = option(0, "perp: rank of the masked LoRA (0: biases and norms only)", min=0)
    calibration_examples: int = option(128, "wanda/gblm: training images that score the weights", min=1)
    limit: int | None = option(None, "train on the first N training images only", min=1)
    seed: int = option(0, "seed of the data order, initialisation and random scores", min=0)

    def validate(self) -> None:
        self.schedule = SCHEDULES.canonical(self.schedule)
        if self.criterion not in weight_criteria():
            raise PrunekitError(f"criterion {self.criterion!r} is not a weight criterion; choose from "
                                f"{', '.join(weight_criteria())}")
        rules = [
            (self.prune_start < self.prune_end, "prune_end", f"in ({self.prune_start}, 1]", self.prune_end),
            (self.floor <= 1 - self.sparsity, "floor", f"in [0, 1 - sparsity] = [0, {1 - self.sparsity:.4g}]",
             self.floor),
            (self.limit is None or self.limit >= self.batch_size, "limit", f">= batch size {self.batch_size}",
             self.limit),
            ((self.depth - 2) % 6 == 0, "depth", "6n + 2 with n >= 1 (8, 14, 20, ...)", self.depth),
        ]
        for ok, key, rule, value in rules:
            if not ok:
                raise PrunekitError(f"--{key.replace('_', '-')} must be {rule}, got {value!r}")
        if self.recovery != "none" and self.method != "oneshot":
            raise PrunekitError(f"--recovery {self.recovery!r} needs --method oneshot, got {self.method!r}")
        if self.method == "imp" and self.criterion != "magnitude":
            raise PrunekitError(f"--method imp prunes by magnitude; --criterion {self.criterion!r} is not used by it")

    def run(self, session) -> dict:
        """Train and prune the zoo model this step names (it builds its own: the session holds no model)."""
        import dataclasses

        from prunekit.training.experiment import RUNTIME, train_and_prune

        if session.model is not None:
            raise PrunekitError(f"a training step trains its own {self.model} on {self.dataset} from scratch; run it "
                                "without a model: prunekit.apply(None, recipe) or prunekit train --recipe")
        return train_and_prune({**dataclasses.asdict(self), **RUNTIME, "quiet": not session.progress})
