"""One training experiment of a ``training`` step: build the zoo model, train it on Fashion-MNIST or MNIST
while pruning it (gradual schedule, one-shot + recovery, IMP), measure, and save the checkpoint.

:func:`train_and_prune` takes the step's fields as a mapping plus the runtime settings of
:data:`RUNTIME`; ``prunekit train`` (:mod:`prunekit.training.cli`) and ``TrainingStep.run`` call it.
"""

from __future__ import annotations

from typing import Any

from prunekit.core.errors import PrunekitError

RUNTIME: dict[str, Any] = {"threads": None, "out": None, "overwrite": False, "json": False,
                           "quiet": False}  # not part of a recipe


def not_a_training_output(path) -> str | None:
    """Why the existing ``path`` is not a file ``prunekit train --out`` wrote (None when it is)."""
    from prunekit.core.checkpoint import load_state

    try:
        state = load_state(path)
    except PrunekitError:
        return "is not a file prunekit train wrote"
    return None if isinstance(state, dict) and {"model", "masks", "config"} <= set(state) else \
        "is not a file prunekit train wrote"


def _build_model(c: dict[str, Any]):
    from prunekit.zoo import ResNet, SmallCNN

    if c["model"] == "cnn":
        return SmallCNN(width=c["width"] or 32)
    return ResNet(c["depth"], c["width"] or 16)


def _load_data(c: dict[str, Any]):
    from prunekit.core.data_sources import fashion_mnist, mnist

    load = fashion_mnist if c["dataset"] == "fashion-mnist" else mnist
    x, y = load("train").tensors()
    xt, yt = load("test").tensors()
    if c["limit"]:
        x, y = x[: c["limit"]], y[: c["limit"]]
    return x, y, xt, yt


def train_and_prune(c: dict[str, Any]) -> dict[str, Any]:
    """Run the configured experiment; returns accuracies and the measured sparsity."""
    import torch

    from prunekit.core.train import Progress, TrainConfig, accuracy, train
    from prunekit.training.criteria import needs_data
    from prunekit.training.imp import IterativeMagnitudePruning
    from prunekit.training.pruner import Pruner, prune_once
    from prunekit.training.recovery import finetune, perp_recover
    from prunekit.training.schedules import imp_sparsities, make_schedule

    if c["threads"]:
        torch.set_num_threads(c["threads"])
    torch.manual_seed(c["seed"])
    x, y, xt, yt = _load_data(c)
    model = _build_model(c)
    config = TrainConfig(epochs=c["epochs"], batch_size=c["batch_size"], lr=c["lr"], optimizer=c["optimizer"],
                         seed=c["seed"])
    total = config.total_steps(len(y))
    # data-aware criteria (wanda, gblm) score weights on the first --calibration training images (and labels)
    n = c["calibration_examples"]
    crit = {"seed": c["seed"], "calibration": (x[:n], y[:n]) if needs_data(c["criterion"]) else None}

    def progress(desc: str) -> list:
        return [] if c["quiet"] else [Progress(desc, leave=True)]

    def run_training(*callbacks, desc="train") -> None:
        train(model, (x, y), config, [*callbacks, *progress(desc)])

    result: dict[str, Any] = {"model": c["model"], "dataset": c["dataset"], "method": c["method"]}
    pruner = None
    if c["method"] == "dense":
        run_training()
    elif c["method"] == "gradual":
        start = int(c["prune_start"] * total)
        end = max(int(c["prune_end"] * total), start + 1)
        schedule = make_schedule(c["schedule"], c["sparsity"], start, end, c["frequency"])
        pruner = Pruner(model, schedule, c["criterion"], c["scope"], c["floor"], **crit)
        run_training(pruner, desc=f"gradual {c['schedule']}")
    elif c["method"] == "oneshot":
        run_training(desc="dense")
        result["dense_accuracy"] = accuracy(model, xt, yt)
        pruner = prune_once(model, c["sparsity"], c["criterion"], c["scope"], c["floor"], **crit)
        result["pruned_accuracy"] = accuracy(model, xt, yt)
        recovery = {"batch_size": c["batch_size"], "seed": c["seed"]}
        if c["recovery"] == "finetune":
            finetune(model, pruner, x, y, c["recovery_epochs"], lr=c["recovery_lr"] or c["lr"] / 5,
                     optimizer=c["optimizer"], callbacks=progress("fine-tune"), **recovery)
        elif c["recovery"] == "perp":
            perp_recover(model, pruner, x, y, c["recovery_epochs"], lr=c["recovery_lr"] or 1e-3,
                         lora_rank=c["lora_rank"], callbacks=progress("PERP"), **recovery)
    else:
        # k rounds of p% each: --rate p, or the p that reaches --sparsity after --rounds rounds
        rate = c["rate"] or 1.0 - (1.0 - c["sparsity"]) ** (1.0 / c["rounds"])
        imp = IterativeMagnitudePruning(model, sparsities=imp_sparsities(c["rounds"], rate),
                                        rewind_step=c["rewind_step"], scope=c["scope"], floor=c["floor"])
        run_training(imp.pruner, imp, desc="IMP dense")
        result["dense_accuracy"] = accuracy(model, xt, yt)
        for r in range(imp.rounds):
            s = imp.next_round()
            run_training(imp.pruner, desc=f"IMP round {r + 1} ({s:.0%})")
            result[f"round_{r + 1}_accuracy"] = accuracy(model, xt, yt)
        pruner = imp.pruner
    result["accuracy"] = accuracy(model, xt, yt)
    result["sparsity"] = pruner.sparsity() if pruner is not None else 0.0
    if c["out"]:
        from prunekit.core.checkpoint import save_state
        from prunekit.core.io import atomic_file

        state = {"model": model.state_dict(), "masks": pruner.masks if pruner else {}, "config": c}
        with atomic_file(c["out"], not_a_training_output, c["overwrite"], flag="--out") as tmp:
            save_state(tmp, state)  # safetensors + JSON: reading it back never runs code
        result["out"] = c["out"]
    return result
