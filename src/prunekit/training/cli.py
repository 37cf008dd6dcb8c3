"""``prunekit train``: train and prune the SmallCNN or ResNet on Fashion-MNIST / MNIST.

Settings are the fields of the recipe's training step (:class:`prunekit.training.step.TrainingStep`),
from flags generated from its fields (:mod:`prunekit.core.cli_args`) or a YAML/JSON recipe (same names,
``-`` or ``_``); flags win over the recipe, the recipe over the defaults. Every value is checked before any training; a bad one gives a one-line error naming
it and exit code 2.

    prunekit train --method gradual --sparsity 0.9 --schedule cubic --epochs 3
    prunekit train --method oneshot --sparsity 0.8 --recovery perp --lora-rank 4
    prunekit train --method imp --rounds 4 --rate 0.2 --rewind-step 100
    prunekit train --recipe recipe.yaml --quiet --json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from prunekit.core.errors import PrunekitError
from prunekit.core.jsonout import dumps_json

RUNTIME: dict[str, Any] = {"threads": None, "out": None, "overwrite": False, "json": False,
                           "quiet": False}  # not part of a recipe


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an ``argparse`` sub-parsers object and return its parser."""
    from prunekit.core.cli_args import add_output_flags, add_step_flags
    from prunekit.training.step import TrainingStep

    p = subparsers.add_parser("train", help="train and prune a small CNN/ResNet on Fashion-MNIST or MNIST",
                              description=__doc__.splitlines()[0])
    p.add_argument("--recipe", help="YAML or JSON recipe with one training step (or a flat mapping of the settings)")
    add_step_flags(p, [TrainingStep])
    p.add_argument("--threads", default=None, help="torch threads (default: all cores)")
    add_output_flags(p, out="save the pruned model, masks and settings to this .safetensors file (read back with "
                     "prunekit.core.checkpoint.load_state; must not exist unless --overwrite)", old=("--output",))
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace --out if it is a file prunekit train wrote")
    p.set_defaults(func=run)
    return p


def read_training_recipe(path: str):
    """The recipe of ``--recipe``: one with one training step, or a flat mapping of the step's settings
    (``-`` or ``_`` in the keys)."""
    from prunekit.core.recipe import Recipe, parse_step, read_recipe_file

    data = read_recipe_file(path)
    if "steps" in data:
        recipe = Recipe.from_dict(data)
        if recipe.kinds() != ["training"]:
            raise PrunekitError(f"recipe {path!r} holds {', '.join(recipe.kinds())} steps; `prunekit train` runs one "
                                "training step")
        return recipe
    flat = {str(key).replace("-", "_"): value for key, value in data.items()}
    return Recipe([parse_step({**flat, "kind": "training"}, f"recipe {path!r}")])


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """The step's defaults, then the recipe, then explicit flags, checked by :class:`TrainingStep`
    (:func:`prunekit.core.cli_args.recipe_from_flags`); plus the runtime settings (threads, out, json,
    quiet)."""
    from prunekit.core.cli_args import recipe_from_flags
    from prunekit.training.step import TrainingStep

    recipe = read_training_recipe(args.recipe) if getattr(args, "recipe", None) else None
    step = recipe_from_flags(args, TrainingStep, recipe, calibration=()).steps[0]
    runtime = {key: getattr(args, key, None) if getattr(args, key, None) is not None else default
               for key, default in RUNTIME.items()}
    runtime["threads"] = _threads(runtime["threads"])
    _check_output(runtime["out"], runtime["overwrite"])
    config = dataclasses.asdict(step)
    _check_model_fits(config)
    return {**config, **runtime}


def _check_model_fits(c: dict[str, Any]) -> None:
    """The model the settings build, with its gradients, optimizer state and a batch's activations, fits
    in memory: counted from --width, --depth and --batch-size before anything is built."""
    from prunekit.core.budget import check_fits, training_bytes
    from prunekit.zoo.cnn import small_cnn_size
    from prunekit.zoo.resnet import resnet_size

    if c["model"] == "cnn":
        parameters, activations = small_cnn_size(c["width"] or 32)
    else:
        parameters, activations = resnet_size(c["depth"], c["width"] or 16)
    check_fits(training_bytes(parameters, activations, c["batch_size"]),
               f"training the {c['model']} of {parameters:,} parameters in batches of {c['batch_size']}",
               "--width" + (", --depth" if c["model"] != "cnn" else "") + " or --batch-size")


def _threads(value: Any) -> int | None:
    from prunekit.core.recipe import parse_value
    from prunekit.core.registry import check_value

    if value is None:
        return None
    from prunekit.core.budget import check_threads

    return check_threads(check_value(parse_value(value) if isinstance(value, str) else value, int, {"min": 1},
                                     "--threads"))


def _not_a_training_output(path) -> str | None:
    """Why the existing ``path`` is not a file ``prunekit train --out`` wrote (None when it is)."""
    from prunekit.core.checkpoint import load_state

    try:
        state = load_state(path)
    except PrunekitError:
        return "is not a file prunekit train wrote"
    return None if isinstance(state, dict) and {"model", "masks", "config"} <= set(state) else \
        "is not a file prunekit train wrote"


def _check_output(output: Any, overwrite: bool = False) -> None:
    """``--out`` is checked before training (an hour of work must not end in a refusal), and again
    when it is written (:func:`prunekit.core.io.atomic_file`)."""
    from prunekit.core.io import check_output

    if output is None:
        return
    if not isinstance(output, str) or not output.strip() or output.endswith(("/", os.sep)):
        raise PrunekitError(f"--out must be a file path, got {output!r}")
    if not output.endswith(".safetensors"):
        raise PrunekitError(f"--out {output!r} must end in .safetensors (prunekit writes safetensors only)")
    check_output(output, overwrite, owned=_not_a_training_output, flag="--out")


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
        with atomic_file(c["out"], _not_a_training_output, c["overwrite"], flag="--out") as tmp:
            save_state(tmp, state)  # safetensors + JSON: reading it back never runs code
        result["out"] = c["out"]
    return result


def run(args: argparse.Namespace) -> int:
    """Entry point of ``prunekit train``; errors and signals reach :mod:`prunekit.core.exits`."""
    config = resolve_config(args)
    result = train_and_prune(config)
    if config["json"]:
        print(dumps_json(result))
    else:
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone ``python -m prunekit.training.cli``: the same as ``prunekit train ...``."""
    from prunekit.cli import main as prunekit_main

    return prunekit_main(["train", *(argv if argv is not None else sys.argv[1:])], process=argv is None)


if __name__ == "__main__":
    raise SystemExit(main())
