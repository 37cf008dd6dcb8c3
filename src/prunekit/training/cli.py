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
from prunekit.training.experiment import RUNTIME, not_a_training_output, train_and_prune

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
    check_output(output, overwrite, owned=not_a_training_output, flag="--out")


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
