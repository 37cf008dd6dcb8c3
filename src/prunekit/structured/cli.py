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


def run_prune(args) -> int:
    """Load, prune structurally, print the speed receipt, save; returns the exit code (0)."""
    from prunekit.io import check_output, save_pretrained
    from prunekit.models import load_model, load_tokenizer, resolve_model_path
    from prunekit.structured.prune import prune_structured

    method = args.method or "flap"
    if method not in NAMES:
        raise ValueError(f"--method {method!r} has no structured criterion; choose from {', '.join(NAMES)}")
    structure = parse_structure(args.structure)
    options = parse_options(getattr(args, "option", None))
    receipt_options = {k: options.pop(k) for k in list(options) if k in RECEIPT_OPTIONS}
    path = resolve_model_path(args.model)
    check_output(args.out, args.overwrite, inputs=(args.model, path))
    quiet = args.quiet or args.json
    model = load_model(args.model)
    tokenizer = load_tokenizer(args.model)
    dense = copy.deepcopy(model) if receipt_options.get("receipt", True) else None
    result = prune_structured(
        model, method=method, structure=structure, ratio=args.ratio, remove=args.remove,
        calibration=args.calibration or "brown", tokenizer=tokenizer, nsamples=args.nsamples or 64,
        seqlen=args.seqlen or 512, seed=args.seed or 0, round_to=args.round_to, progress=not quiet, **options)
    receipt = None
    if dense is not None:
        from prunekit.evaluate.speed import speed_receipt

        receipt = speed_receipt(dense, model, runs=int(receipt_options.get("speed_runs", 3)),
                                seq_len=int(receipt_options.get("speed_seqlen", 512)),
                                decode_tokens=int(receipt_options.get("speed_decode", 64)))
    manifest = {"structured": result.to_dict(), "layer_shapes": result.layer_shapes,
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
