"""``prunekit prune|eval|inspect|demo`` (and ``train``/``data``/``vocab``/``delta``, owned by their packages).

Every bad input is a one-line error on stderr and exit code 2, with nothing written; checks that need
no weights (flags, recipe, device, model config, text source, --out) run before the model loads.
Errors and signals map to exit codes in one place, :mod:`prunekit.core.exits`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prunekit.core.errors import PrunekitError
from prunekit.core.jsonout import dumps_json
from prunekit.core.inputs import add_trust_pickle_arg

DEMO_OUT = "out/smollm2-135m-wanda50"
REGISTRY_KINDS = {"methods": "METHODS", "criteria": "CRITERIA", "allocations": "ALLOCATIONS",
                  "schedules": "SCHEDULES", "scores": "SCORES", "selectors": "SELECTORS", "steps": "STEPS",
                  "delta-methods": "DELTA_METHODS",
                  "tasks": "TASKS"}
FOLDER_NOTES = {  # what inspect adds about a folder that plain from_pretrained does not load
    "per-layer": "\nper-layer widths (config.json: prunekit_layer_shapes): in Python load it with "
                 "prunekit.load_pretrained(path) or prunekit.load_model(path); plain from_pretrained refuses it",
    "decilm": "\nthe DeciLM / Nemotron-NAS layout (prunekit export --format decilm): prunekit.load_pretrained(path) "
              "reads it as the Llama it describes",
}
STRUCTURED_ONLY = {"ratio": "--ratio", "remove": "--remove", "round_to": "--round-to", "widths": "--widths"}


def _add_step_args(p: argparse.ArgumentParser) -> None:
    from prunekit.core.recipe import COMPUTE_DTYPES, RUNNERS
    from prunekit.core.registry import CRITERIA, METHODS

    p.add_argument("--method", default=None, help=f"one of: {', '.join(METHODS.names())} (default wanda); with "
                   f"--structure: {', '.join(name for name, _ in CRITERIA.describe())} (default flap)")
    p.add_argument("--sparsity", type=float, default=None, help="fraction removed: of each layer's weights (default 0.5), or with --structure of "
                   "the structures' parameters")
    p.add_argument("--pattern", default=None, help="unstructured | per-row | N:M such as 2:4 (N pruned of every M)")
    p.add_argument("--allocation", default=None, help="uniform | global | owl (layer-wise sparsity)")
    p.add_argument("--targets", default=None, help="comma list of class names or re:<regex> (default Linear)")
    p.add_argument("--ignore", default=None, help="comma list of class names or re:<regex> to skip")
    p.add_argument("--option", action="append", default=[], help="method option key=value, e.g. percdamp=0.02")
    p.add_argument("--calibration", default=None, help="brown | brown:<genres> | text file (default brown)")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows (default 64)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per calibration window (default 512)")
    p.add_argument("--chunk-size", type=int, default=None, help="calibration windows per forward chunk (default 8); "
                   "fewer hold less activation memory at once (a wide MLP's intermediates)")
    p.add_argument("--seed", type=int, default=None, help="seed for calibration offsets and random scores")
    p.add_argument("--runner", default=None, choices=RUNNERS,
                   help="lockstep (default): one pass, each layer calibrated on the pruned layers before it, holding "
                   "a block's activations for every window; two-pass: calibrate the dense block, prune, run it "
                   "again: one chunk's activations, about twice the time; dense: one pass and one chunk's "
                   "activations, every layer calibrated on the dense model (earlier blocks' pruning errors are not "
                   "propagated)")
    p.add_argument("--compute-dtype", default=None, choices=COMPUTE_DTYPES,
                   help="dtype of the activations and of each block while it is calibrated (the weights are saved "
                   "in --dtype); auto (default): float32 for SparseGPT on 16-bit weights, else --dtype")
    p.add_argument("--recipe", default=None, help="YAML/JSON recipe; flags given too override its first step")
    p.add_argument("--device", default=None, help="run each block on this device in turn (e.g. cuda); "
                   "the model and activations stay on the CPU")


def build_parser() -> argparse.ArgumentParser:
    from prunekit.core.exits import OneLineParser

    parser = OneLineParser(prog="prunekit", description="Prune neural networks and their data.",
                           epilog="--debug (anywhere, or PRUNEKIT_DEBUG=1): a bug's full traceback")
    parser.add_argument("--version", action="version", version=f"prunekit {__import__('prunekit').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="one-shot pruning of a causal LM")
    p.add_argument("--model", required=True, help="smollm2-135m, a local folder, or a Hugging Face hub id")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    _add_dtype_arg(p)
    _add_step_args(p)
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="one-shot from a folder or name: read, prune and write one block at a time, never holding "
                   "the whole model (default: whenever possible; --stream makes it an error when not, --no-stream "
                   "loads the whole model)")
    g = p.add_argument_group("structured pruning (physically removes channels, heads or blocks)")
    g.add_argument("--structure", default=None, help="comma list of mlp,heads,blocks")
    g.add_argument("--ratio", type=float, default=None, help="old spelling of --sparsity with --structure")
    g.add_argument("--remove", type=int, default=None, help="number of blocks to remove (with --structure blocks)")
    g.add_argument("--round-to", type=int, default=None, help="kept MLP widths are multiples of this (default 8)")
    g.add_argument("--widths", default=None, choices=("per-layer", "uniform"),
                   help="per-layer (default): each layer keeps what the allocation gives it, loaded by "
                   "prunekit.load_pretrained; uniform: every block the same widths, a folder plain from_pretrained loads")
    p.add_argument("--report", action="store_true", help="write a report with plots into OUT/report "
                   "(as prunekit report OUT --baseline MODEL)")
    add_trust_pickle_arg(p)
    _add_output_args(p)

    e = sub.add_parser("eval", help="perplexity on a fixed protocol (default), zero-shot tasks, lm-eval-harness")
    e.add_argument("--model", required=True)
    _add_dtype_arg(e)
    e.add_argument("--text", default="brown:a", help="text source (default brown:a, press reportage)")
    e.add_argument("--nwindows", default=32, help="windows of --seqlen tokens, or 'all' (the whole stream; default 32)")
    e.add_argument("--seqlen", type=int, default=512)
    e.add_argument("--stride", type=int, default=None, help="start a window every STRIDE tokens (overlapping "
                   "windows score only their new tokens; default: --seqlen, no overlap)")
    _add_task_args(e)
    add_trust_pickle_arg(e)
    _add_output_args(e)

    i = sub.add_parser("inspect", help="sparsity report: per-layer zeros, N:M validity, parameters")
    i.add_argument("--model", required=True)
    add_trust_pickle_arg(i)
    _add_output_args(i)

    from prunekit.evaluate.report import add_parser as add_report_parser

    add_report_parser(sub, _add_task_args, _add_output_args)

    r = sub.add_parser("list", help="what can be named: methods, criteria, allocations, schedules, scores, "
                       "selectors, recipe steps (read from the registries)")
    r.add_argument("kind", nargs="?", choices=sorted(REGISTRY_KINDS), help="one kind (default: all)")
    _add_output_args(r)

    d = sub.add_parser("demo", help="prune the embedded SmolLM2-135M with Wanda 50%% and compare perplexity")
    d.add_argument("--nsamples", type=int, default=64)
    d.add_argument("--nwindows", type=int, default=32)
    d.add_argument("--out", default=DEMO_OUT)
    d.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    _add_output_args(d)

    from prunekit.data import cli as data_cli  # sub-commands owned by their packages; a broken import is an error
    from prunekit.delta import cli as delta_cli
    from prunekit.structured import export as export_cli
    from prunekit.training import cli as training_cli
    from prunekit.vocab import cli as vocab_cli

    for module in (training_cli, data_cli, vocab_cli, delta_cli, export_cli):
        module.add_parser(sub).set_defaults(run=module.run)
    return parser


def _add_task_args(p: argparse.ArgumentParser, limit: int | None = None, lmeval: bool = True) -> None:
    from prunekit.core.registry import TASKS

    p.add_argument("--tasks", default=None, help=f"comma list: perplexity, prunekit tasks ({', '.join(TASKS.names())}) "
                   "or lm-eval-harness tasks (hellaswag, arc_easy, ...; needs prunekit[lmeval]); default: perplexity")
    p.add_argument("--limit", type=int, default=limit, help="score the first N items of each task (a seeded "
                   f"random sample; default {'all' if limit is None else limit})")
    p.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per forward pass of the task scorer")
    if lmeval:
        p.add_argument("--lmeval", action="store_true", help="also run the prunekit tasks through lm-eval-harness "
                       "(exported as task YAMLs over local JSONL)")


def _add_dtype_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default=None, help="auto (default: the checkpoint's own) | bfloat16 | float16 | float32: "
                   "the model is loaded, run and saved in it (statistics accumulate in float32)")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    p.add_argument("--json", action="store_true", help="print one JSON object (implies --quiet)")


def load_recipe_arg(args):
    """The recipe of ``--recipe`` (any prunekit.json included), or None."""
    from prunekit.core.recipe import load_recipe

    return load_recipe(args.recipe) if getattr(args, "recipe", None) else None


def recipe_from_args(args, recipe=None):
    """The one-shot recipe: ``--recipe`` (if given) with the flags given overriding its first step."""
    import dataclasses

    from prunekit.core.recipe import CalibrationConfig, Recipe, parse_options
    from prunekit.oneshot.step import PruneStep

    for key, flag in STRUCTURED_ONLY.items():
        if getattr(args, key, None) is not None:
            raise PrunekitError(f"{flag} {getattr(args, key)!r} applies only to structured pruning; add --structure "
                             "mlp,heads,blocks or use --sparsity")
    recipe = recipe if recipe is not None else load_recipe_arg(args)
    steps = list(recipe.steps) if recipe else []
    step = {
        "method": args.method, "sparsity": args.sparsity, "pattern": args.pattern, "allocation": args.allocation,
        "targets": args.targets.split(",") if args.targets else None,
        "ignore": args.ignore.split(",") if args.ignore else None,
        "options": parse_options(args.option) or None, "seed": args.seed,
    }
    given = {k: v for k, v in step.items() if v is not None}
    if not steps or given:
        base = dataclasses.asdict(steps[0]) if steps else {}
        if "method" in given and given["method"] != base.get("method"):
            base = {k: v for k, v in base.items() if k not in ("options", "pattern")}
        if "pattern" in given and "sparsity" not in given:
            base.pop("sparsity", None)
        steps = [PruneStep(**{**base, **given}), *steps[1:]]
    calib = {k: v for k, v in vars(recipe.calibration).items()} if recipe else {}
    for key in ("nsamples", "seqlen", "seed", "chunk_size", "runner", "compute_dtype"):
        value = getattr(args, key)
        if value is not None:
            calib[key] = value
    if args.calibration is not None:
        calib["source"] = args.calibration
    return Recipe(steps=steps, calibration=CalibrationConfig(**calib))


def _step_kind(args, recipe) -> str:
    """Which kind of prune the command runs: ``structured`` with --structure or a structured recipe,
    else ``oneshot``; a recipe mixes no kinds, and training/selection steps belong to other commands."""
    kinds = set(recipe.kinds()) if recipe else set()
    if len(kinds) > 1:
        raise PrunekitError(f"recipe {args.recipe!r} mixes step kinds {', '.join(sorted(kinds))}; `prunekit prune` runs "
                         "one kind per call (oneshot or structured): split it into two recipes")
    kind = "structured" if args.structure else (kinds.pop() if kinds else "oneshot")
    commands = {"training": "prunekit train --recipe", "selection": "prunekit data select --recipe",
                "vocab": "prunekit vocab --recipe", "delta": "prunekit delta --recipe"}
    if kind in commands:
        raise PrunekitError(f"recipe {args.recipe!r} holds {kind} steps: run it with `{commands[kind]}`")
    return kind


def cmd_prune(args) -> int:
    if args.report:  # checked before any work: the plots need matplotlib
        from prunekit.evaluate.report import report_after_prune, require_matplotlib

        require_matplotlib()
    code = _prune(args)
    if args.report and code == 0:
        report_after_prune(args)
    return code


def _prune(args) -> int:
    recipe = load_recipe_arg(args)
    if _step_kind(args, recipe) == "structured":  # physical removal: prunekit.structured
        if args.stream:
            raise PrunekitError("--stream applies to one-shot pruning; structured pruning loads the whole model")
        from prunekit.structured.cli import run_prune

        return run_prune(args, recipe)
    from prunekit.core.data_sources import check_source
    from prunekit.core.io import check_output, save_pretrained
    from prunekit.models.loading import (check_device, check_dtype, check_seqlen, check_weights, load_config,
                                         load_model, load_tokenizer)

    recipe = recipe_from_args(args, recipe)  # every check that needs no weights comes before the model loads
    dtype = check_dtype(args.dtype)
    device = check_device(args.device)
    check_source(recipe.calibration.source)
    config = load_config(args.model)
    if any(step.build().needs_calibration or step.allocation == "owl" for step in recipe.steps):
        check_seqlen(config, recipe.calibration.seqlen, "calibration seqlen")  # only windows need positions
        from prunekit.core.budget import check_calibration
        from prunekit.models.loading import resolve_dtype

        check_calibration(config, recipe.calibration, resolve_dtype(dtype, config))
    path = check_weights(args.model, args.trust_pickle_weights)
    check_output(args.out, args.overwrite, inputs=(args.model, path))
    import prunekit
    from prunekit.oneshot.prune import manifest, stream_plan

    folder, why = stream_plan(recipe, args.model, args.stream)
    if folder is not None:  # streaming: one block at a time from the shards to the output (oneshot/prune.py)
        result = prunekit.prune_pretrained(folder, args.out, recipe, progress=not args.quiet, device=device,
                                           overwrite=args.overwrite, source=path, dtype=dtype)
        out = Path(args.out).expanduser().resolve()
    else:
        if why and not args.quiet:
            print(f"prunekit prune: {why}: loading the whole model (no streaming)", file=sys.stderr)
        tokenizer = load_tokenizer(args.model)
        model = load_model(args.model, dtype=dtype, trust_pickle_weights=args.trust_pickle_weights)
        result = prunekit.prune(model, recipe, tokenizer=tokenizer, progress=not args.quiet, device=device)
        out = save_pretrained(model, args.out, tokenizer, manifest=manifest(recipe, result), overwrite=args.overwrite,
                              source=path)
    if args.json:
        print(dumps_json({**result.to_dict(), "out": str(out)}, default=str))
    elif not args.quiet:
        print(result.summary())
        print(f"saved to {out}")
    return 0


def cmd_eval(args) -> int:
    from prunekit.evaluate.cli import run_eval
    from prunekit.models.loading import check_dtype

    args.dtype = check_dtype(args.dtype)  # before anything loads

    return run_eval(args)


def cmd_inspect(args) -> int:
    from prunekit.evaluate.sparsity import format_report, sparsity_report
    from prunekit.models import load_model

    from prunekit.core.io import folder_kind
    from prunekit.models.loading import resolve_model_path

    report = sparsity_report(load_model(args.model, trust_pickle_weights=args.trust_pickle_weights))
    report["folder"] = folder_kind(resolve_model_path(args.model))  # how the folder loads (issue 12)
    print(dumps_json(report) if args.json else format_report(report) + FOLDER_NOTES.get(report["folder"], ""))
    return 0


def cmd_list(args) -> int:
    """Every registered name with its one-line description and options (type, default, help)."""
    from prunekit.core import registry

    listing = {}
    for kind in [args.kind] if args.kind else REGISTRY_KINDS:
        reg = getattr(registry, REGISTRY_KINDS[kind])
        listing[kind] = [{"name": name, "description": doc,
                          "options": [{"name": o.name, "type": o.type, "default": o.default, "help": o.help}
                                      for o in reg.options(name)]} for name, doc in reg.describe()]
    if args.json:
        print(dumps_json(listing, default=str))
        return 0
    for kind, entries in listing.items():
        print(f"{kind}:")
        for entry in entries:
            print(f"  {entry['name']:<18} {entry['description']}")
            for o in entry["options"]:
                print(f"  {'':<18}   {o['name']}={o['default']!r}  ({o['type']}) {o['help']}")
    return 0


def cmd_demo(args) -> int:
    import time

    import torch

    import prunekit
    from prunekit.evaluate.perplexity import perplexity
    from prunekit.core.io import read_manifest, save_pretrained
    from prunekit.models import load_model, load_tokenizer
    from prunekit.core.recipe import CalibrationConfig, Recipe
    from prunekit.oneshot.prune import manifest
    from prunekit.oneshot.step import PruneStep

    from prunekit.core.budget import check_threads

    if check_threads(args.threads):
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    overwrite = out.exists() and read_manifest(out).get("demo") is True
    from prunekit.core.io import check_output

    check_output(out, overwrite)
    say = (lambda *a: None) if args.quiet or args.json else print
    say(f"prunekit demo: SmolLM2-135M, Wanda 50% per-row, calibration brown (genres b-r, "
        f"{args.nsamples} x 512 tokens), evaluation brown:a ({args.nwindows} x 512 tokens), "
        f"{torch.get_num_threads()} threads")
    model, tokenizer = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    dense = perplexity(model, tokenizer, "brown:a", args.nwindows, progress=not args.quiet)
    say(f"dense perplexity  {dense.perplexity:8.2f}")
    recipe = Recipe([PruneStep(method="wanda", sparsity=0.5)], CalibrationConfig(nsamples=args.nsamples))
    t0 = time.perf_counter()
    result = prunekit.prune(model, recipe, tokenizer=tokenizer, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    pruned = perplexity(model, tokenizer, "brown:a", args.nwindows, progress=not args.quiet)
    say(f"pruned perplexity {pruned.perplexity:8.2f}  ({pruned.perplexity / dense.perplexity:.2f}x dense)")
    say(result.summary(max_rows=8))
    say(f"pruning took {seconds:.1f} s; peak RSS {result.peak_rss_mb:,.0f} MB")
    saved = save_pretrained(model, out, tokenizer, manifest={**manifest(recipe, result), "demo": True},
                            overwrite=overwrite, source="smollm2-135m")
    say(f"saved to {saved}  (try: prunekit eval --model {saved})")
    if args.json:
        print(dumps_json({"dense_perplexity": dense.perplexity, "pruned_perplexity": pruned.perplexity,
                          "sparsity": result.sparsity, "seconds": seconds, "peak_rss_mb": result.peak_rss_mb,
                          "out": str(saved)}))
    return 0


def _silence_transformers() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


COMMANDS = {"prune": cmd_prune, "eval": cmd_eval, "inspect": cmd_inspect, "list": cmd_list, "demo": cmd_demo}


def prepare_process() -> None:
    """Settings that must precede ``import torch``: torch backs its CPU buffers of 2 MB or more with
    transparent huge pages (``THP_MEM_ALLOC_ENABLE``, read once, at torch's first allocation). The block
    runner has glibc mmap every buffer of 4 MB or more (``core/memory.py``), and faulting each fresh
    activation buffer in 4 kB pages cost a fifth of a prune's time: allocating and filling a 25 MB
    tensor took 37 ms with 4 kB pages and 10 ms with huge pages (``/tmp``-free microbenchmark, 1 thread).
    A no-op once torch is imported; ``PRUNEKIT_KEEP_MALLOC=1`` opts out, as for the allocator."""
    if "torch" not in sys.modules and os.environ.get("PRUNEKIT_KEEP_MALLOC") != "1":
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: list[str] | None = None, *, process: bool | None = None) -> int:
    """Run one command; the exit code follows :mod:`prunekit.core.exits` (the one place that maps
    errors and signals: bad input 2, our bug 1, Ctrl-C 130, SIGTERM 143). ``process`` (default: when
    ``argv`` is None, i.e. the ``prunekit`` command itself) leaves an interrupted run at once with its
    code (:func:`prunekit.core.exits.leave_interrupted`)."""
    from prunekit.core.exits import leave_interrupted, run_command

    process = argv is None if process is None else process
    prepare_process()
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    debug = "--debug" in argv or os.environ.get("PRUNEKIT_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), "")
    if command == "data":  # its sub-command names the line: "prunekit data select: ..."
        command = " ".join([command, *[a for a in argv[argv.index("data") + 1:] if not a.startswith("-")][:1]])
    code = run_command(command, lambda: _main(argv), debug)
    if process:
        leave_interrupted(code)
    return code


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "json", False):
        args.quiet = True
    if getattr(args, "quiet", False):
        _silence_transformers()
    if args.command in COMMANDS:
        return COMMANDS[args.command](args)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
