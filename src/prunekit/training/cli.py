"""``prunekit train``: train and prune the SmallCNN or ResNet on Fashion-MNIST / MNIST.

Settings come from flags or a YAML/JSON recipe (same names, ``-`` or ``_``); flags win over the
recipe, the recipe over the defaults. Every value is checked before any training; a bad one gives
a one-line error naming it and exit code 2.

    prunekit train --method gradual --sparsity 0.9 --schedule cubic --epochs 3
    prunekit train --method oneshot --sparsity 0.8 --recovery perp --lora-rank 4
    prunekit train --method imp --rounds 4 --rate 0.2 --rewind-step 100
    prunekit train --recipe recipe.yaml --quiet --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from prunekit.core.errors import PrunekitError

DEFAULTS: dict[str, Any] = {
    "model": "cnn", "depth": 8, "width": None, "dataset": "fashion-mnist", "epochs": 1.0, "batch_size": 128,
    "lr": 0.05, "optimizer": "sgd", "method": "dense", "sparsity": 0.9, "schedule": "cubic",
    "prune_start": 0.1, "prune_end": 0.6, "frequency": 10, "criterion": "magnitude", "scope": "layer",
    "floor": 0.0, "rounds": 3, "rate": None, "rewind_step": 0, "recovery": "none", "recovery_epochs": 0.5,
    "recovery_lr": None, "lora_rank": 0, "calibration": 128, "limit": None, "seed": 0, "threads": None, "output": None,
    "json": False, "quiet": False,
}
CHOICES = {
    "model": ("cnn", "resnet"), "dataset": ("fashion-mnist", "mnist"), "optimizer": ("sgd", "adamw"),
    "method": ("dense", "gradual", "oneshot", "imp"), "schedule": ("cubic", "linear", "constant", "oneshot"),
    "criterion": ("magnitude", "random", "wanda", "gblm"), "scope": ("layer", "global"), "recovery": ("none", "finetune", "perp"),
}
INTS = ("depth", "width", "batch_size", "frequency", "rounds", "rewind_step", "lora_rank", "calibration", "limit",
        "seed", "threads")
FLOATS = ("epochs", "lr", "rate", "sparsity", "prune_start", "prune_end", "floor", "recovery_epochs", "recovery_lr")


class ConfigError(PrunekitError):
    """A bad setting; its message names the setting and the value."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an ``argparse`` sub-parsers object and return its parser."""
    p = subparsers.add_parser("train", help="train and prune a small CNN/ResNet on Fashion-MNIST or MNIST",
                              description=__doc__.splitlines()[0])
    p.add_argument("--recipe", help="YAML or JSON file with any of the settings below")
    for key, default in DEFAULTS.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", default=None)
            continue
        kind = "int" if key in INTS else "float" if key in FLOATS else "str"
        shown = "/".join(CHOICES[key]) if key in CHOICES else kind
        # values stay strings here and are parsed in run(), so every bad value gets the same one-line error
        p.add_argument(flag, default=None, metavar=shown.upper() if key not in CHOICES else "{" + shown + "}",
                       help=f"default: {default}")
    p.set_defaults(func=run)

    def one_line_error(message: str) -> None:
        sys.stderr.write(f"prunekit train: error: {message}\n")
        raise SystemExit(2)

    p.error = one_line_error
    return p


def _load_recipe(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"recipe {path!r} not found")
    text = file.read_text()
    try:
        if file.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes a one-line message
        raise ConfigError(f"recipe {path!r} is not valid {file.suffix.lstrip('.') or 'YAML'}: "
                          f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path!r} must be a mapping of settings, got {type(data).__name__}")
    recipe = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in DEFAULTS:
            raise ConfigError(f"unknown recipe setting {key!r} in {path!r}")
        recipe[name] = value
    return recipe


def _coerce(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in INTS:
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"--{key.replace('_', '-')} must be an integer, got {value!r}") from None
    if key in FLOATS:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"--{key.replace('_', '-')} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"--{key.replace('_', '-')} must be finite, got {value!r}")
        return number
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"--{key.replace('_', '-')} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if isinstance(DEFAULTS[key], bool) and not isinstance(value, bool):
        raise ConfigError(f"--{key.replace('_', '-')} must be true or false, got {value!r}")
    return value


def _check_ranges(c: dict[str, Any]) -> None:
    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise ConfigError(f"--{key.replace('_', '-')} must be {rule}, got {c[key]!r}")

    need(c["epochs"] > 0, "epochs", "> 0")
    need(c["batch_size"] >= 1, "batch_size", ">= 1")
    need(c["lr"] > 0, "lr", "> 0")
    need(0 <= c["sparsity"] < 1, "sparsity", "in [0, 1)")
    need(0 <= c["prune_start"] < 1, "prune_start", "in [0, 1)")
    need(c["prune_start"] < c["prune_end"] <= 1, "prune_end", f"in ({c['prune_start']}, 1]")
    need(c["frequency"] >= 1, "frequency", ">= 1")
    if c["output"] is not None:  # checked before training: an hour of work must not end in a refusal
        need(isinstance(c["output"], str) and c["output"].strip() != "", "output", "a file path")
        out = os.path.abspath(c["output"])
        need(not os.path.lexists(out), "output", "a path that does not exist yet (nothing is overwritten)")
        need(not c["output"].endswith(("/", os.sep)), "output", "a file path, not a folder")
        need(os.path.isdir(os.path.dirname(out)), "output", "in an existing folder")
        need(os.access(os.path.dirname(out), os.W_OK | os.X_OK), "output", "in a folder you can write to")
    need(0 <= c["floor"] <= 1 - c["sparsity"], "floor", f"in [0, 1 - sparsity] = [0, {1 - c['sparsity']:.4g}]")
    need(c["rounds"] >= 1, "rounds", ">= 1")
    need(c["rate"] is None or 0 < c["rate"] < 1, "rate", "in (0, 1)")
    need(c["rewind_step"] >= 0, "rewind_step", ">= 0")
    need(c["recovery_epochs"] > 0, "recovery_epochs", "> 0")
    need(c["recovery_lr"] is None or c["recovery_lr"] > 0, "recovery_lr", "> 0")
    need(c["lora_rank"] >= 0, "lora_rank", ">= 0")
    need(c["calibration"] >= 1, "calibration", ">= 1")
    need(c["limit"] is None or c["limit"] >= c["batch_size"], "limit", f">= batch size {c['batch_size']}")
    need(c["depth"] >= 8 and (c["depth"] - 2) % 6 == 0, "depth", "6n + 2 with n >= 1 (8, 14, 20, ...)")
    need(c["width"] is None or c["width"] >= 1, "width", ">= 1")
    need(c["threads"] is None or c["threads"] >= 1, "threads", ">= 1")
    if c["recovery"] != "none" and c["method"] != "oneshot":
        raise ConfigError(f"--recovery {c['recovery']!r} needs --method oneshot, got {c['method']!r}")
    if c["method"] == "imp" and c["criterion"] != "magnitude":
        raise ConfigError(f"--method imp prunes by magnitude; --criterion {c['criterion']!r} is not used by it")


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the recipe, then explicit flags; every value coerced and range-checked."""
    config = dict(DEFAULTS)
    if getattr(args, "recipe", None):
        config.update(_load_recipe(args.recipe))
    config.update({k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None})
    config = {k: _coerce(k, v) for k, v in config.items()}
    _check_ranges(config)
    return config


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
    # wanda / gblm score weights on the first --calibration training images (gblm also on their labels)
    crit = {"seed": c["seed"], "calibration": (x[: c["calibration"]], y[: c["calibration"]])
            if c["criterion"] in ("wanda", "gblm") else None}

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
    if c["output"]:
        state = {"model": model.state_dict(), "masks": pruner.masks if pruner else {}, "config": c}
        out = os.path.abspath(c["output"])
        tmp = f"{out}.tmp-{os.getpid()}"  # written beside the target, then renamed: never half a file
        try:
            torch.save(state, tmp)  # a dict of tensors and plain values: readable with weights_only=True
            os.replace(tmp, out)
        except OSError as exc:  # disk full, folder removed meanwhile: one line, and no half-written file left
            raise PrunekitError(f"cannot write --output {c['output']!r}: {exc.strerror or exc}") from None
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        result["output"] = c["output"]
    return result


def run(args: argparse.Namespace) -> int:
    """Entry point of ``prunekit train``; returns the exit code (2 for a bad setting)."""
    try:
        config = resolve_config(args)
        result = train_and_prune(config)
    except PrunekitError as exc:  # ConfigError included
        print(f"prunekit train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunekit train: interrupted; nothing was saved", file=sys.stderr)
        return 130
    if config["json"]:
        print(json.dumps(result, indent=1))
    else:
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone ``python -m prunekit.training.cli``: the ``train`` sub-command only."""
    parser = argparse.ArgumentParser(prog="prunekit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["train", *(argv if argv is not None else sys.argv[1:])])
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
