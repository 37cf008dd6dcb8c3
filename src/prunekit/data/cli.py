"""``prunekit data score|select|train|report``: data pruning from the command line.

Wire it into a parent CLI with ``add_parser(subparsers)`` and dispatch with ``run(args)``; or run
``python -m prunekit.data.cli ...`` directly. The score and selector choices, their help texts and the
selector option flags (``--offset``, ``--beta``, ``--bins``) come from the registries
(:data:`~prunekit.core.registry.SCORES`, :data:`~prunekit.core.registry.SELECTORS`); every value is
checked by the registry's checker. Every bad value is reported as one line naming the value and the
valid choices, with exit code 2, before anything is written.

Examples::

    prunekit data score  --dataset fashion-mnist --scores el2n,aum,forgetting --seeds 0,1 --out runs/s
    prunekit data report --scores runs/s
    prunekit data select --scores runs/s --score aum --selector ccs --sparsity 0.7 --out runs/keep30.npz
    prunekit data select --scores runs/s --recipe recipe.yaml --out runs/keep.npz
    prunekit data train  --dataset fashion-mnist --selection runs/keep30.npz --budget equal-epochs \\
                         --epochs 3 --kd --out runs/train30
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

from prunekit.core.errors import PrunekitError, unknown_choice
from prunekit.core.jsonout import dumps_json
from prunekit.core.recipe import parse_value
from prunekit.core.registry import SCORES, SELECTORS, check_value
from prunekit.data.runs import check_run_folder, fingerprint, open_run
from prunekit.data.select import SEED_MAX
from prunekit.data.table import AGGREGATES
from prunekit.data.train import BUDGET_KINDS

VISION_DATASETS = ("fashion-mnist", "mnist")
DATASETS = (*VISION_DATASETS, "brown")
FORMATS = ("parquet", "npz")
COMMANDS = ("score", "select", "train", "report")




def _entries(registry, names=None) -> str:
    """``name: first docstring line`` per entry, for an epilog."""
    return "\n".join(f"  {name:<18} {doc}" for name, doc in registry.describe() if names is None or name in names)


def _selector_options() -> dict[str, list[str]]:
    """Option name -> the selectors that have it (each becomes a ``--<option>`` flag of ``select``)."""
    owners: dict[str, list[str]] = {}
    for name in SELECTORS.names():
        for opt in SELECTORS.options(name):
            owners.setdefault(opt.name, []).append(name)
    return owners


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` with its sub-commands to a parent CLI's ``subparsers``."""
    from prunekit.core.cli_args import add_output_flags, add_step_flags
    from prunekit.data.pipeline import classifier_scores
    from prunekit.data.select import SelectionStep
    from prunekit.data.text import text_scores

    data = subparsers.add_parser("data", help="data pruning: score, select, train, report")
    sub = data.add_subparsers(dest="data_command", metavar="{score,select,train,report}")
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("score", help="score every training example (resumable)", formatter_class=raw,
                       epilog="data scores (all stored higher = harder):\n" + _entries(SCORES))
    p.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--scores", default="el2n,aum,forgetting",
                   help=f"comma-separated data scores; images: {', '.join(classifier_scores())}; "
                        f"text (brown): {', '.join(text_scores())}")
    add_output_flags(p, out="output folder (scores + manifest.json)", required=True)
    p.add_argument("--seeds", default="0", help="comma-separated training seeds to average over")
    p.add_argument("--epochs", default="3", help="epochs of each scoring run")
    p.add_argument("--score-epochs", default="1", help="comma-separated epochs at which model scores are taken")
    p.add_argument("--limit", default=None, help="score only the first N examples / documents")
    p.add_argument("--format", default="parquet", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--model", default="smollm2-135m", help="causal LM for text scores")
    p.add_argument("--max-tokens", default="256", help="tokens per document for text scores")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("select", help="choose the examples to keep", formatter_class=raw,
                       epilog="selectors:\n" + _entries(SELECTORS))
    p.add_argument("--scores", required=True, help="folder written by 'score'")
    p.add_argument("--score", default=None, help="score column to select on (default: the recipe's or the first)")
    p.add_argument("--recipe", default=None, help="YAML/JSON recipe of selection steps (steps: [{kind: selection, "
                   "selector: ccs, sparsity: 0.7}]); flags given too apply to its one step")
    add_step_flags(p, [SelectionStep], skip=("seed", "options"))
    for opt, owners in _selector_options().items():
        info = next(o for o in SELECTORS.options(owners[0]) if o.name == opt)
        p.add_argument(f"--{opt.replace('_', '-')}", dest=f"option_{opt}", default=None, metavar=opt.upper(),
                       help=f"{'/'.join(owners)} option: {info.help}")
    p.add_argument("--aggregate", default="mean", help=f"over seeds/checkpoints: {', '.join(AGGREGATES)}")
    p.add_argument("--seed", default="0")
    add_output_flags(p, out="output .npz (indices, mask) plus a .json summary", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace --out (and its summary) if select wrote them")

    p = sub.add_parser("train", help="train the reference CNN on a selection, optionally with KD")
    p.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(VISION_DATASETS)}")
    p.add_argument("--selection", required=True, help=".npz written by 'select'")
    p.add_argument("--budget", required=True, help=f"one of {', '.join(BUDGET_KINDS)} (relative to --epochs)")
    p.add_argument("--epochs", default="3", help="epochs of the full-data run the budget refers to")
    p.add_argument("--kd", action="store_true", help="distill from a teacher trained on the full data")
    p.add_argument("--temperature", default=None, help="KD temperature (default: kd_defaults)")
    p.add_argument("--alpha", default=None, help="KD teacher weight in [0, 1] (default: kd_defaults)")
    p.add_argument("--seed", default="0")
    add_output_flags(p, out="output folder (result.json, teacher cache)", required=True)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("report", help="summary and seed-stability report of a score table")
    p.add_argument("--scores", required=True, help="folder written by 'score'")
    add_output_flags(p, out="write the markdown report here too (a new file, or one 'report' wrote with "
                     "--overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a report prunekit wrote")
    return data


# ---------------------------------------------------------------------------------- values
def _choice(kind: str, value: str, choices) -> str:
    if value not in choices:
        raise unknown_choice(kind, value, choices)
    return value


def _flag(flag: str, text: str, hint: Any, **bounds) -> Any:
    """The value of ``flag`` checked with the registry's checker (type, then ``min``/``max``/``above``/``below``)."""
    return check_value(parse_value(text), hint, bounds, flag)


def _int_list(flag: str, text: str, lo: int = 0, hi: int = SEED_MAX) -> list[int]:
    """A non-empty comma-separated list of distinct integers in [lo, hi]."""
    out = [_flag(f"{flag} entry", v.strip(), int, min=lo, max=hi) for v in text.split(",") if v.strip()]
    if not out:
        raise PrunekitError(f"{flag} {text!r} is empty; give at least one integer")
    if len(set(out)) != len(out):
        raise PrunekitError(f"{flag} {text!r} repeats an entry; give each once")
    return out


def _seed(text: str) -> int:
    return _flag("--seed", text, int, min=0, max=SEED_MAX)


def _scores_dir(path: str) -> Path:
    folder = Path(path)
    if not (folder / "manifest.json").is_file():
        raise PrunekitError(f"--scores {path!r} has no manifest.json (run 'prunekit data score' first)")
    return folder


# ---------------------------------------------------------------------------------- commands
def _load_vision(name: str, split: str = "train"):
    from prunekit.core.data_sources import fashion_mnist, mnist

    return (fashion_mnist if name == "fashion-mnist" else mnist)(split)


def cmd_score(args) -> int:
    from prunekit.data.pipeline import build_scores, classifier_scores
    from prunekit.data.text import text_scores

    _choice("dataset", args.dataset, DATASETS)
    _choice("format", args.format, FORMATS)
    names = [s.strip() for s in args.scores.split(",") if s.strip()]
    if args.dataset == "brown":
        build_scores(names, text_scores(), what="text documents")
    else:
        build_scores(names, classifier_scores(), what=f"the images of {args.dataset}")
    seeds = _int_list("--seeds", args.seeds)
    epochs = _flag("--epochs", args.epochs, int, min=1)
    score_epochs = _int_list("--score-epochs", args.score_epochs, 1, epochs)
    limit = None if args.limit is None else _flag("--limit", args.limit, int, min=1)
    max_tokens = _flag("--max-tokens", args.max_tokens, int, min=2)
    check_run_folder(args.out, "data score")  # before any data is loaded: a bad --out fails in a second
    from prunekit.data.ids import example_ids
    from prunekit.data.table import ScoreTable

    meta = {"dataset": args.dataset, "command": " ".join(sys.argv)}
    if args.dataset == "brown":
        from prunekit.data.text import brown_documents, lm_document_scores, load_lm

        docs = brown_documents(limit=limit)
        hashes = example_ids([t for _, t in docs])
        open_run(args.out, "data score", {"dataset": args.dataset, "limit": limit, "scores": sorted(set(names)),
                                          "model": args.model, "max_tokens": max_tokens, "format": args.format,
                                          "n_examples": len(docs), "examples": fingerprint(hashes)})
        model, tok = load_lm(args.model)
        res = lm_document_scores(model, tok, [t for _, t in docs], max_tokens, progress=_progress(args),
                                 names=names)
        table = ScoreTable(manifest={**meta, "model": args.model, "max_tokens": max_tokens,
                                     "documents": [n for n, _ in docs]})
        for s in names:
            table.add(s, res[s], hashes, direction=SCORES.get(s).direction)
        table.save(args.out, args.format)
    else:
        import torch

        from prunekit.data.pipeline import score_classifier

        x, y = _load_vision(args.dataset).tensors()
        if limit is not None:
            x, y = x[:limit], y[:limit]
        hashes = example_ids(x)
        table = score_classifier(x, y, hashes, names, args.out, seeds=seeds, epochs=epochs,
                                 score_epochs=score_epochs, progress=_progress(args),
                                 meta={**meta, "threads": torch.get_num_threads()}, fmt=args.format,
                                 config={"dataset": args.dataset, "limit": limit})
    if args.json:
        print(dumps_json({"dataset": args.dataset, "scores": table.score_names, "rows": len(table),
                          **({"model": args.model} if args.dataset == "brown" else {}), "out": str(args.out)}))
    else:
        print(f"wrote {len(table)} rows ({', '.join(table.score_names)}) to {args.out}")
    return 0


def _progress(args) -> bool:
    return not (args.no_progress or args.quiet or args.json)


def _option_value(selector: str, option: str, text: str) -> Any:
    """The text of ``--<option>`` checked against the selector's field (type and range)."""
    cls = SELECTORS.get(selector)
    field = next(f for f in dataclasses.fields(cls) if f.name == option)
    return check_value(parse_value(text), typing.get_type_hints(cls)[option], field.metadata,
                       f"--{option.replace('_', '-')}")


def selection_recipe(args):
    """``(extras, recipe)``: ``--recipe``'s selection steps (or one step of the flags) with the flags
    given applied to its one selection step (:func:`prunekit.core.cli_args.recipe_from_flags`).

    ``--sparsity``/``--keep`` are checked as flags first; the selector option flags (``--beta`` ...) are
    the selector's options. Without its option flag, CCS's ``beta`` grows with the fraction removed
    (:func:`ccs_default_beta`)."""
    from prunekit.core.cli_args import recipe_from_flags
    from prunekit.data.select import SelectionStep, ccs_default_beta, read_selection_recipe

    extras, recipe = read_selection_recipe(args.recipe) if args.recipe is not None else ({}, None)
    if args.sparsity is not None and args.keep is not None:
        raise PrunekitError("give --sparsity or its alias --keep, not both")
    if recipe is None and args.sparsity is None and args.keep is None:
        raise PrunekitError("--sparsity (or its alias --keep) is required without --recipe")
    removed = None
    if args.sparsity is not None:
        removed = _flag("--sparsity", args.sparsity, float, min=0, below=1)
    if args.keep is not None:
        keep = _flag("--keep", args.keep, int | float, above=0)
        if keep > 1 and not float(keep).is_integer():
            raise PrunekitError(f"--keep {args.keep!r} is neither a fraction in (0, 1] nor a whole count >= 1")
        removed = 1 - keep if keep <= 1 else None
    steps = [s for s in recipe.steps if s.name == "selection"] if recipe else []
    given = args.selector or args.method
    selector = SELECTORS.canonical(given or (steps[0].selector if len(steps) == 1 else "hardest"))
    options = {}
    for opt, owners in _selector_options().items():
        text = getattr(args, f"option_{opt}")
        if text is None:
            continue
        if selector not in owners:
            raise PrunekitError(f"--{opt.replace('_', '-')} {text!r} applies only to selector "
                                f"{' or '.join(owners)}, not {selector!r}")
        options[opt] = _option_value(selector, opt, text)
    if recipe is None and selector == "ccs" and "beta" not in options:
        options["beta"] = ccs_default_beta(removed) if removed is not None else 0.0
    values: dict[str, Any] = {"options": options} if options else {}
    if args.keep is not None:  # 1 is the whole dataset, not one example
        values["keep"] = float(keep) if keep <= 1 else int(keep)
    return extras, recipe_from_flags(args, SelectionStep, recipe, given=values, calibration=())


def cmd_select(args) -> int:
    from prunekit.data.select import apply_recipe, check_selection_out, save_selection
    from prunekit.data.table import ScoreTable

    folder = _scores_dir(args.scores)
    _choice("aggregate", args.aggregate, AGGREGATES)
    seed = _seed(args.seed)
    extras, recipe = selection_recipe(args)
    steps = recipe.steps
    check_selection_out(args.out, args.overwrite)
    table = ScoreTable.load(folder)
    score = args.score or extras.get("score") or table.score_names[0]
    _choice("score column", score, table.score_names)
    aggregate = _choice("aggregate", extras.get("aggregate", args.aggregate), AGGREGATES)
    values = table.vector(score, aggregate=aggregate)
    labels = table.labels()
    needs_labels = any(s.class_balanced for s in steps)
    if needs_labels and (labels < 0).any():
        raise PrunekitError("class_balanced needs labels, but this score table has none")
    sel = apply_recipe(values, steps, labels=labels if needs_labels else None, seed=seed)
    summary = {"scores": str(folder), "score": score, "aggregate": aggregate, "steps": [s.to_dict() for s in steps],
               "seed": seed, "kept": len(sel), "n_total": sel.n_total, "fraction_removed": sel.fraction_removed}
    out = save_selection(args.out, sel, summary, args.overwrite)
    if args.json:
        print(dumps_json({**summary, "out": str(out)}))
    else:
        print(f"kept {len(sel)} of {sel.n_total} ({100 * sel.fraction_removed:.1f}% removed) -> {out}")
    return 0


def cmd_train(args) -> int:
    from prunekit.data.select import Selection
    from prunekit.data.train import Budget, kd_defaults, train_on_selection

    _choice("dataset", args.dataset, VISION_DATASETS)
    _choice("budget", args.budget, BUDGET_KINDS)
    epochs = _flag("--epochs", args.epochs, float, above=0)
    seed = _seed(args.seed)
    temperature = None if args.temperature is None else _flag("--temperature", args.temperature, float, above=0)
    alpha = None if args.alpha is None else _flag("--alpha", args.alpha, float, min=0, max=1)
    if not args.kd and (temperature is not None or alpha is not None):
        flag = "--temperature" if temperature is not None else "--alpha"
        raise PrunekitError(f"{flag} {args.temperature if temperature is not None else args.alpha!r} applies only "
                            "with --kd")
    if not Path(args.selection).is_file():
        raise PrunekitError(f"--selection {args.selection!r} does not exist or is not a file")
    check_run_folder(args.out, "data train")  # before any data is loaded or trained on
    sel = Selection.load(args.selection)  # checked: integer indices in range, no repeats
    if len(sel) == 0:
        raise PrunekitError(f"--selection {args.selection!r} keeps no examples")
    x, y = _load_vision(args.dataset).tensors()
    xt, yt = _load_vision(args.dataset, "test").tensors()
    if sel.n_total != len(x):
        raise PrunekitError(f"--selection was made on {sel.n_total} examples but {args.dataset} has {len(x)}")
    budget = Budget(args.budget, epochs)
    kd = {}
    if args.kd:
        kd = kd_defaults(sel.fraction_removed)
        kd.update({k: v for k, v in (("temperature", temperature), ("alpha", alpha)) if v is not None})
    out = open_run(args.out, "data train", {
        "dataset": args.dataset, "selection": f"{len(sel)} of {sel.n_total}, {fingerprint(sel.indices)}",
        "budget": args.budget, "epochs": epochs, "kd": bool(args.kd), "temperature": kd.get("temperature"),
        "alpha": kd.get("alpha"), "seed": seed, "n_examples": len(x), "labels": fingerprint(y),
    })
    result = train_on_selection(out, sel, (x, y, xt, yt), budget, kd=kd, seed=seed, progress=_progress(args),
                                meta={"selection": args.selection})
    if args.json:
        print(dumps_json({**result, "dataset": args.dataset, "out": str(out / "result.json")}))
    else:
        print(f"test accuracy {100 * result['test_accuracy']:.2f}% ({len(sel)} examples, {result['steps']} steps) "
              f"-> {out / 'result.json'}")
    return 0


def cmd_report(args) -> int:
    from prunekit.data.report import write_report

    folder = _scores_dir(args.scores)
    text = write_report(folder, args.out, args.overwrite)
    if args.json:
        print(dumps_json({"scores": str(folder), "out": args.out and str(args.out), "report": text}))
    else:
        print(text, end="")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed ``prunekit data ...`` command; returns the exit code. Errors and signals
    reach :mod:`prunekit.core.exits` (one line; bad input 2, Ctrl-C 130, SIGTERM 143; rerunning an
    interrupted ``score``/``train`` command resumes it)."""
    command = getattr(args, "data_command", None)
    handlers = {"score": cmd_score, "select": cmd_select, "train": cmd_train, "report": cmd_report}
    if command not in handlers:
        raise PrunekitError(f"command {command!r} is not one of: {', '.join(COMMANDS)}")
    return handlers[command](args)


def main(argv: list[str] | None = None) -> int:
    """``python -m prunekit.data.cli data ...``: the same as ``prunekit data ...``."""
    from prunekit.cli import main as prunekit_main

    return prunekit_main(sys.argv[1:] if argv is None else argv, process=argv is None)


if __name__ == "__main__":
    raise SystemExit(main())
