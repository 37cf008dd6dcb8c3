"""``prunekit prune --structure ...``: the structured branch of the prune command.

The lead's CLI parses the flags and calls :func:`run_prune`; every bad request raises a one-line
``ValueError`` (exit code 2 there) before anything is written.
"""

from __future__ import annotations

import copy
import json

from prunekit.structured.criteria import NAMES

PIPELINE_OPTIONS = {"allocation": str, "floor": float, "bias_compensation": bool}
RECEIPT_OPTIONS = {"receipt": bool, "speed_runs": int, "speed_seqlen": int, "speed_decode": int}


def parse_options(items: list[str] | None) -> dict:
    """``["key=value", ...]`` -> dict, values parsed as JSON where they are JSON (numbers, true/false)."""
    options = {}
    for text in items or []:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects key=value, got {text!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def parse_structure(text: str) -> tuple[str, ...]:
    from prunekit.structured.prune import STRUCTURES

    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    for p in parts:
        if p not in STRUCTURES:
            raise ValueError(f"--structure {p!r} is unknown; choose from {', '.join(STRUCTURES)}")
    if not parts:
        raise ValueError(f"--structure is empty; choose from {', '.join(STRUCTURES)}")
    return parts


def recipe_from_args(args):
    """A :class:`~prunekit.structured.recipe.StructuredRecipe` from ``--recipe`` (if given) and the flags;
    flags that are given override the recipe. Receipt options are returned separately."""
    from prunekit.recipe import CalibrationConfig
    from prunekit.structured.recipe import StructuredRecipe, StructuredStep, load_structured_recipe

    recipe = load_structured_recipe(args.recipe) if getattr(args, "recipe", None) else None
    step = recipe.structured.__dict__.copy() if recipe else {**StructuredStep().__dict__, "ratio": None}
    options = parse_options(getattr(args, "option", None))
    receipt_options = {k: options.pop(k) for k in list(options) if k in RECEIPT_OPTIONS}
    pipeline = {k: options.pop(k) for k in list(options) if k in PIPELINE_OPTIONS}
    if args.method is not None and args.method != step["method"]:
        step["options"] = {}  # criterion options belong to the recipe's method
    if args.method is not None and args.method not in NAMES:
        raise ValueError(f"--method {args.method!r} has no structured criterion; choose from {', '.join(NAMES)}")
    given = {"method": args.method, "ratio": args.ratio, "remove": getattr(args, "remove", None),
             "allocation": getattr(args, "allocation", None),
             "structure": ",".join(parse_structure(args.structure)) if args.structure else None}
    if getattr(args, "round_to", 8) != 8 or not getattr(args, "recipe", None):
        given["round_to"] = getattr(args, "round_to", 8)
    step.update({k: v for k, v in given.items() if v is not None}, **pipeline)
    step["options"] = {**step["options"], **options}
    calibration = recipe.calibration if recipe else CalibrationConfig()
    for key in ("nsamples", "seqlen", "seed"):
        if getattr(args, key, None) is not None:
            setattr(calibration, key, getattr(args, key))
    if getattr(args, "calibration", None) is not None:
        calibration.source = args.calibration
    return StructuredRecipe(StructuredStep(**step), CalibrationConfig(**vars(calibration))), receipt_options


def run_prune(args) -> int:
    """Load, prune structurally, print the speed receipt, save; returns the exit code (0)."""
    from prunekit.io import check_output, save_pretrained
    from prunekit.models import load_model, load_tokenizer, resolve_model_path

    recipe, receipt_options = recipe_from_args(args)
    path = resolve_model_path(args.model)
    check_output(args.out, args.overwrite, inputs=(args.model, path))
    quiet = args.quiet or args.json
    model = load_model(args.model)
    tokenizer = load_tokenizer(args.model)
    dense = copy.deepcopy(model) if receipt_options.get("receipt", True) else None
    result = recipe.apply(model, tokenizer=tokenizer, progress=not quiet)
    receipt = None
    if dense is not None:
        from prunekit.evaluate.speed import speed_receipt

        receipt = speed_receipt(dense, model, runs=int(receipt_options.get("speed_runs", 3)),
                                seq_len=int(receipt_options.get("speed_seqlen", 512)),
                                decode_tokens=int(receipt_options.get("speed_decode", 64)))
    manifest = {"structured": result.to_dict(), "layer_shapes": result.layer_shapes, "recipe": recipe.to_dict(),
                "speed": receipt.to_dict() if receipt else None}
    out = save_pretrained(model, args.out, tokenizer, manifest=manifest, overwrite=args.overwrite, source=path)
    if args.json:
        print(json.dumps({**manifest, "out": str(out)}, default=str))
    elif not args.quiet:
        print(result.summary())
        if receipt:
            print(receipt.summary())
        loader = "prunekit.load_pretrained" if result.layer_shapes else "from_pretrained"
        print(f"saved to {out} (load with {loader})")
    return 0
