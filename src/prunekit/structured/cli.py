"""``prunekit prune --structure ...``: the structured branch of the prune command.

The top-level CLI parses the flags and calls :func:`run_prune`; every bad request raises a one-line
``PrunekitError`` (exit code 2 there) before anything is written: flags of one-shot pruning that
do not apply here (``--sparsity``, ``--pattern``, ``--targets``, ``--ignore``, ``--device``) are
errors, not ignored, and so is a request that would remove nothing (``--round-to`` not below the
MLP width).
"""

from __future__ import annotations

import copy
import dataclasses

from prunekit.core.errors import PrunekitError
from prunekit.core.jsonout import dumps_json
from prunekit.core.recipe import parse_options
from prunekit.structured.recipe import parse_structure

COMMAND_ONLY = {"device": "--device", "stream": "--stream"}  # flags of `prune` the structured branch has no use for
RECEIPT_OPTIONS = {"receipt": bool, "speed_runs": int, "speed_seqlen": int, "speed_decode": int}
# the calibration keys structured pruning reads: its statistics walk runs the dense runner on one chunk size
CALIBRATION_READ = ("source", "nsamples", "seqlen", "seed")


def recipe_from_args(args, recipe=None):
    """The structured recipe: ``--recipe`` (if given) with the flags given applied to its one structured
    step (:func:`prunekit.core.cli_args.recipe_from_flags`); flags of one-shot pruning and calibration
    flags structured pruning does not read are refused. Speed-receipt options are returned separately."""
    from prunekit.core.cli_args import recipe_from_flags
    from prunekit.structured.recipe import StructuredStep

    for key, flag in COMMAND_ONLY.items():
        if getattr(args, key, None):
            raise PrunekitError(f"{flag} {getattr(args, key)!r} does not apply to structured pruning (--structure or a "
                                "structured recipe); use --sparsity (or --remove for blocks) and drop it")
    options = parse_options(getattr(args, "option", None))
    receipt_options = {k: options.pop(k) for k in list(options) if k in RECEIPT_OPTIONS}
    check_receipt_options(receipt_options)
    args = copy.copy(args)  # the receipt options are the command's, not the step's
    args.option = [item for item in args.option or [] if item.partition("=")[0] not in RECEIPT_OPTIONS]
    fraction = args.sparsity if args.sparsity is not None else args.ratio
    given = {"sparsity": None} if recipe is None and fraction is None else {}
    built = recipe_from_flags(args, StructuredStep, recipe, given=given, calibration=CALIBRATION_READ)
    steps = [s for s in built.steps if s.name == "structured"]
    parts = parse_structure(steps[0].structure) if len(steps) == 1 else ()
    if args.round_to is not None and parts and "mlp" not in parts:
        raise PrunekitError(f"--round-to {convert_text(args.round_to)} applies only to structure mlp, but structure "
                            f"is {','.join(parts)}; drop it")
    if fraction is not None and args.remove is not None and parts == ("blocks",):
        raise PrunekitError(f"--sparsity {convert_text(fraction)} and --remove {convert_text(args.remove)} both say "
                            "how many blocks to remove; give one of them")
    return built, receipt_options


def convert_text(text):
    """A flag's text as it reads in a message (0.2, not '0.2')."""
    from prunekit.core.recipe import parse_value

    return parse_value(text) if isinstance(text, str) else text


def check_round_to(model, step) -> None:
    """``round_to`` must be below the widest MLP: kept widths round to its multiples (capped at the
    full width), so a larger value rounds every block back to its full width and removes nothing."""
    if "mlp" not in parse_structure(step.structure):
        return
    from prunekit.core.families import adapter_for
    from prunekit.structured.graph import find_groups

    widest = max((g.n_units for g in find_groups(adapter_for(model), ("mlp",))), default=0)
    if widest and step.round_to >= widest:
        raise PrunekitError(f"--round-to {step.round_to} is not below the MLP width {widest}: every kept width would "
                            f"round back to {widest} and nothing would be removed; use a value below {widest} (e.g. 8)")


def check_receipt_options(options: dict) -> None:
    for key, value in options.items():
        kind = RECEIPT_OPTIONS[key]
        if kind is bool and not isinstance(value, bool):
            raise PrunekitError(f"--option {key} must be true or false, got {value!r}")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PrunekitError(f"--option {key} must be an integer >= 1, got {value!r}")


def run_prune(args, recipe=None) -> int:
    """Load, prune structurally, print the speed receipt, save; returns the exit code (0)."""
    from prunekit.core.data_sources import check_source
    from prunekit.core.io import check_output, save_pretrained
    from prunekit.core.budget import check_calibration
    from prunekit.models.loading import (check_dtype, check_family, check_seqlen, check_weights, load_config,
                                         load_model, load_tokenizer, resolve_dtype)
    from prunekit.structured.prune import require_layout

    recipe, receipt_options = recipe_from_args(args, recipe)  # every check that needs no model comes first
    dtype = check_dtype(getattr(args, "dtype", None))
    check_source(recipe.calibration.source)
    config = load_config(args.model)
    require_layout(check_family(config))
    check_seqlen(config, recipe.calibration.seqlen, "calibration seqlen")
    check_calibration(config, dataclasses.replace(recipe.calibration, runner="dense"), resolve_dtype(dtype, config))
    check_plain_folder(config, recipe)
    trust_pickle = args.trust_pickle_weights
    path = check_weights(args.model, trust_pickle)
    check_output(args.out, args.overwrite, inputs=(args.model, path))
    quiet = args.quiet or args.json
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype=dtype, trust_pickle_weights=trust_pickle)
    from prunekit.structured.recipe import apply_step

    for step in recipe.steps:
        check_round_to(model, step)
    dense = copy.deepcopy(model) if receipt_options.get("receipt", True) else None
    for step in recipe.steps:
        result = apply_step(model, step, recipe.calibration, tokenizer=tokenizer, progress=not quiet)
        if result.parameters_after == result.parameters_before and (step.sparsity or step.remove):
            raise PrunekitError(f"nothing was removed: sparsity {step.sparsity} (remove {step.remove}, round_to "
                                f"{step.round_to}) keeps every unit of this model; use a larger sparsity or a smaller "
                                "--round-to")
    receipt = None
    if dense is not None:
        from prunekit.evaluate.speed import speed_receipt

        receipt = speed_receipt(dense, model, runs=int(receipt_options.get("speed_runs", 3)),
                                seq_len=int(receipt_options.get("speed_seqlen", 512)),
                                decode_tokens=int(receipt_options.get("speed_decode", 64)))
    manifest = {**recipe.to_dict(), "result": result.to_dict(), "layer_shapes": result.layer_shapes,
                "speed": receipt.to_dict() if receipt else None}
    out = save_pretrained(model, args.out, tokenizer, manifest=manifest, overwrite=args.overwrite, source=path)
    kind, how = describe_folder(out, bool(result.layer_shapes))
    if args.json:
        print(dumps_json({**manifest, "model": str(args.model), "out": str(out), "folder": kind, "load_with": how},
                         default=str))
        return 0
    if not args.quiet:
        print(result.summary())
        if receipt:
            print(receipt.summary())
    print(f"saved to {out}: {kind}; load it with {how}")
    return 0


def describe_folder(out, per_layer: bool) -> tuple[str, str]:
    """(which kind of folder, how to load it) for the line the CLI prints after saving."""
    if not per_layer:
        return ("a plain transformers folder (the config describes every block)",
                f"AutoModelForCausalLM.from_pretrained({str(out)!r}) (no prunekit needed)")
    return ("per-layer widths, recorded in config.json as prunekit_layer_shapes (plain from_pretrained refuses it; "
            "--widths uniform writes a plain folder, `prunekit export --format decilm` a serving-engine one)",
            f"prunekit.load_pretrained({str(out)!r}) or prunekit.load_model")


def check_plain_folder(config, recipe) -> None:
    """``--widths uniform``: what the family's stock class cannot build is refused before the weights load
    (checked on a skeleton of the model on the meta device)."""
    steps = [s for s in recipe.steps if getattr(s, "widths", None) == "uniform"]
    if not steps:
        return
    import torch
    from transformers import AutoModelForCausalLM

    from prunekit.core.registry import CRITERIA
    from prunekit.structured.prune import check_plain_widths

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    for step in steps:
        compensate = step.bias_compensation
        if compensate is None:
            compensate = CRITERIA.build(step.method, step.options).bias_compensation
        check_plain_widths(skeleton, parse_structure(step.structure), step.allocation, compensate)
