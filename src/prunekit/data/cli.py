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
RECIPE_KEYS = ("score", "aggregate", "steps", "calibration")  # calibration: a full recipe's, unused here




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
    from prunekit.data.pipeline import classifier_scores
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
    p.add_argument("--out", required=True, help="output folder (scores + manifest.json)")
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
    p.add_argument("--recipe", default=None, help="YAML/JSON recipe: {score, aggregate, steps: [selection steps]}")
    p.add_argument("--selector", "--method", dest="selector", default=None,
                   help=f"which examples are kept: one of {', '.join(SELECTORS.names())} (default hardest)")
    p.add_argument("--sparsity", default=None, help="fraction of the examples removed, in [0, 1)")
    p.add_argument("--keep", default=None, help="alias of --sparsity: the fraction kept in (0, 1], or a count")
    for opt, owners in _selector_options().items():
        info = next(o for o in SELECTORS.options(owners[0]) if o.name == opt)
        p.add_argument(f"--{opt.replace('_', '-')}", dest=f"option_{opt}", default=None, metavar=opt.upper(),
                       help=f"{'/'.join(owners)} option: {info.help}")
    p.add_argument("--class-balanced", action="store_true", help="exact per-class quotas")
    p.add_argument("--aggregate", default="mean", help=f"over seeds/checkpoints: {', '.join(AGGREGATES)}")
    p.add_argument("--seed", default="0")
    p.add_argument("--out", required=True, help="output .npz (indices, mask) plus a .json summary")
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
    p.add_argument("--out", required=True, help="output folder (result.json, teacher cache)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("report", help="summary and seed-stability report of a score table")
    p.add_argument("--scores", required=True, help="folder written by 'score'")
    p.add_argument("--out", default=None, help="write the markdown report here too (a new file, or one "
                   "'report' wrote with --overwrite)")
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
        res = lm_document_scores(model, tok, [t for _, t in docs], max_tokens, progress=not args.no_progress,
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
                                 score_epochs=score_epochs, progress=not args.no_progress,
                                 meta={**meta, "threads": torch.get_num_threads()}, fmt=args.format,
                                 config={"dataset": args.dataset, "limit": limit})
    print(f"wrote {len(table)} rows ({', '.join(table.score_names)}) to {args.out}")
    return 0


def read_select_recipe(path: str) -> tuple[dict, list]:
    """``({score, aggregate}, steps)`` of a data-selection recipe file: a mapping with ``steps`` (and
    optionally ``score``, ``aggregate``; a full recipe's ``calibration`` is ignored). Read by the
    core's recipe reader; every step is checked by the registries."""
    from prunekit.core.recipe import PROVENANCE_KEYS, check_keys, read_recipe_file
    from prunekit.data.select import selection_steps

    data = read_recipe_file(path)  # a non-empty mapping, or a one-line error
    if "steps" not in data:
        raise PrunekitError(f"recipe file {path!r} must hold the selection steps under 'steps'")
    check_keys({k: v for k, v in data.items() if k not in PROVENANCE_KEYS}, RECIPE_KEYS, f"recipe file {path!r}")
    for key in ("score", "aggregate"):
        if key in data and not isinstance(data[key], str):
            raise PrunekitError(f"recipe file {path!r}: {key} {data[key]!r} must be a string")
    return {k: data[k] for k in ("score", "aggregate") if k in data}, selection_steps(data["steps"])


def _option_value(selector: str, option: str, text: str) -> Any:
    """The text of ``--<option>`` checked against the selector's field (type and range)."""
    cls = SELECTORS.get(selector)
    field = next(f for f in dataclasses.fields(cls) if f.name == option)
    return check_value(parse_value(text), typing.get_type_hints(cls)[option], field.metadata,
                       f"--{option.replace('_', '-')}")


def step_from_flags(args):
    """The one selection step given by ``--selector/--sparsity/--keep/--<option>/--class-balanced``.

    Without its option flag, CCS's ``beta`` grows with the fraction removed (:func:`ccs_default_beta`)."""
    from prunekit.data.select import SelectionStep, ccs_default_beta

    selector = SELECTORS.canonical(args.selector or "hardest")
    step: dict[str, Any] = {"selector": selector, "class_balanced": bool(args.class_balanced)}
    if args.sparsity is None and args.keep is None:
        raise PrunekitError("--sparsity (or its alias --keep) is required without --recipe")
    if args.sparsity is not None and args.keep is not None:
        raise PrunekitError("give --sparsity or its alias --keep, not both")
    if args.sparsity is not None:
        step["sparsity"] = _flag("--sparsity", args.sparsity, float, min=0, below=1)
        removed = step["sparsity"]
    else:
        keep = _flag("--keep", args.keep, int | float, above=0)
        if keep <= 1:
            keep = float(keep)
        elif not float(keep).is_integer():
            raise PrunekitError(f"--keep {args.keep!r} is neither a fraction in (0, 1] nor a whole count >= 1")
        step["keep"] = keep if keep <= 1 else int(keep)
        removed = 1 - keep if isinstance(step["keep"], float) else None
    options = {}
    for opt, owners in _selector_options().items():
        text = getattr(args, f"option_{opt}")
        if text is None:
            continue
        if selector not in owners:
            raise PrunekitError(f"--{opt.replace('_', '-')} {text!r} applies only to selector "
                                f"{' or '.join(owners)}, not {selector!r}")
        options[opt] = _option_value(selector, opt, text)
    if selector == "ccs" and "beta" not in options:
        options["beta"] = ccs_default_beta(removed) if removed is not None else 0.0
    return SelectionStep(**step, options=options)


def _check_select_out(path: str, overwrite: bool) -> Path:
    """``--out`` of ``select``: a ``.npz`` (and its ``.json`` summary beside it), new, or files ``select``
    wrote with ``--overwrite``; the rules of :func:`prunekit.core.io.check_output`."""
    from prunekit.core.io import check_output
    from prunekit.data.select import not_a_selection

    if Path(path).suffix != ".npz":
        raise PrunekitError(f"--out {path!r} must end in .npz (the selection; a .json summary is written beside it)")
    out = check_output(path, overwrite, owned=not_a_selection)
    check_output(out.with_suffix(".json"), overwrite, owned=not_a_selection, probe=False)
    return out


def cmd_select(args) -> int:
    from prunekit.core.io import atomic_file, write_json
    from prunekit.data.select import apply_recipe, not_a_selection
    from prunekit.data.table import ScoreTable

    folder = _scores_dir(args.scores)
    _choice("aggregate", args.aggregate, AGGREGATES)
    seed = _seed(args.seed)
    step_flags = {"--selector": args.selector, "--sparsity": args.sparsity, "--keep": args.keep,
                  **{f"--{o.replace('_', '-')}": getattr(args, f"option_{o}") for o in _selector_options()},
                  "--class-balanced": args.class_balanced or None}
    if args.recipe is not None:
        given = [flag for flag, v in step_flags.items() if v is not None]
        if given:
            raise PrunekitError(f"give either --recipe or {given[0]} (the recipe's steps hold those settings), "
                                "not both")
        recipe, steps = read_select_recipe(args.recipe)
    else:
        recipe, steps = {}, [step_from_flags(args)]
    out = _check_select_out(args.out, args.overwrite)
    table = ScoreTable.load(folder)
    score = args.score or recipe.get("score") or table.score_names[0]
    _choice("score column", score, table.score_names)
    aggregate = _choice("aggregate", recipe.get("aggregate", args.aggregate), AGGREGATES)
    values = table.vector(score, aggregate=aggregate)
    labels = table.labels()
    needs_labels = any(s.class_balanced for s in steps)
    if needs_labels and (labels < 0).any():
        raise PrunekitError("class_balanced needs labels, but this score table has none")
    sel = apply_recipe(values, steps, labels=labels if needs_labels else None, seed=seed)
    summary = {"scores": str(folder), "score": score, "aggregate": aggregate, "steps": [s.to_dict() for s in steps],
               "seed": seed, "kept": len(sel), "n_total": sel.n_total, "fraction_removed": sel.fraction_removed}
    summary_name = out.with_suffix(".json").name
    with atomic_file(out, not_a_selection, args.overwrite, also=[summary_name]) as tmp:  # both files or neither
        sel.write(tmp)
        write_json(tmp.with_name(summary_name), summary)
    print(f"kept {len(sel)} of {sel.n_total} ({100 * sel.fraction_removed:.1f}% removed) -> {out}")
    return 0


def _teacher_logits(cache: Path, n: int):
    """Cached teacher logits (safetensors), or ``None`` when there are none yet."""
    from prunekit.core.checkpoint import load_state

    if not cache.is_file():
        return None
    logits = load_state(cache).get("logits")  # safetensors + JSON: reading it never runs code
    if not (hasattr(logits, "shape") and logits.ndim == 2 and logits.shape[0] == n and logits.is_floating_point()):
        raise PrunekitError(f"{str(cache)!r} does not hold the teacher logits of {n} examples; delete it to retrain the "
                       "teacher")
    return logits


def cmd_train(args) -> int:
    import numpy as np
    import torch

    from prunekit.core.checkpoint import save_state
    from prunekit.core.io import replace_file, write_json
    from prunekit.core.train import accuracy
    from prunekit.data.scores._common import batched_logits
    from prunekit.data.select import Selection
    from prunekit.data.train import Budget, fit, kd_defaults
    from prunekit.zoo import SmallCNN

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
    teacher_logits = None
    if args.kd:
        cache = out / f"teacher_seed{seed}_logits.safetensors"
        teacher_logits = _teacher_logits(cache, len(x))
        if teacher_logits is None:
            torch.manual_seed(seed)
            teacher = SmallCNN()
            fit(teacher, x, y, steps=Budget("equal-epochs", epochs).steps(len(x), len(x), 128), seed=seed,
                checkpoint_path=out / "teacher.ckpt", progress=not args.no_progress)
            teacher_logits = batched_logits(teacher, x)
            with replace_file(cache) as tmp:
                save_state(tmp, {"logits": teacher_logits})
    torch.manual_seed(seed)
    model = SmallCNN()
    steps = budget.steps(len(sel), len(x), 128)
    fit(model, x, y, np.asarray(sel.indices), steps=steps, seed=seed, teacher_logits=teacher_logits,
        checkpoint_path=out / "student.ckpt", progress=not args.no_progress, **kd)
    acc = accuracy(model, xt, yt)
    result = {"selection": args.selection, "kept": len(sel), "fraction_removed": sel.fraction_removed,
              "budget": args.budget, "epochs": epochs, "steps": steps, "kd": kd or None, "seed": seed,
              "test_accuracy": acc, "threads": torch.get_num_threads()}
    with replace_file(out / "result.json") as tmp:
        write_json(tmp, result)
    print(f"test accuracy {100 * acc:.2f}% ({len(sel)} examples, {steps} steps) -> {out / 'result.json'}")
    return 0


def report_markdown(folder: str | Path) -> str:
    """Per-score summary and pairwise seed stability (Spearman, Kendall) as markdown; the folder, score
    names and directions come from files, so they are escaped (``core.markup.md_escape``)."""
    import numpy as np

    from prunekit.core.markup import md_escape
    from prunekit.data.table import ScoreTable, stability_report

    table = ScoreTable.load(folder)
    lines = [f"{REPORT_TITLE} {md_escape(folder)}", "", f"{table.n_examples()} examples, {len(table)} rows.", "",
             "| score | direction | runs (seed, checkpoint) | mean | std | min | max |", "|---|---|---|---|---|---|---|"]
    for s in table.score_names:
        v = table.vector(s)
        lines.append(f"| {md_escape(s)} | {md_escape(table.direction(s))} | {table.runs(s)} | {np.nanmean(v):.4g} | {np.nanstd(v):.4g} "
                     f"| {np.nanmin(v):.4g} | {np.nanmax(v):.4g} |")
    stab = stability_report(table)
    lines += ["", "## Stability between seeds", ""]
    if stab:
        lines += ["| score | seeds | Spearman | Kendall |", "|---|---|---|---|"]
        lines += [f"| {md_escape(r['score'])} | {r['seed_a']} vs {r['seed_b']} | {r['spearman']:.3f} | {r['kendall']:.3f} |"
                  for r in stab]
    else:
        lines.append("Only one seed per score: nothing to compare.")
    return "\n".join(lines) + "\n"


REPORT_TITLE = "# Score report:"


def _not_a_report(path: Path) -> str | None:
    """Why the existing ``path`` is not a score report ``data report`` wrote (None when it is)."""
    try:
        with path.open("rb") as f:
            ours = f.read(len(REPORT_TITLE)).decode("utf-8", "replace") == REPORT_TITLE
    except OSError:
        ours = False
    return None if ours else "is not a prunekit score report"


def cmd_report(args) -> int:
    from prunekit.core.io import atomic_file, check_output, write_text

    folder = _scores_dir(args.scores)
    if args.out:
        check_output(args.out, args.overwrite, inputs=(str(folder),), owned=_not_a_report)
    text = report_markdown(folder)
    if args.out:
        with atomic_file(args.out, _not_a_report, args.overwrite, inputs=(str(folder),)) as tmp:
            write_text(tmp, text)
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
