"""``prunekit data score|select|train|report``: data pruning from the command line.

Wire it into a parent CLI with ``add_parser(subparsers)`` and dispatch with ``run(args)``; or run
``python -m prunekit.data.cli ...`` directly. Every bad value is reported as one line naming the
value and the valid choices, with exit code 2, before anything is written.

Examples::

    prunekit data score  --dataset fashion-mnist --scores el2n,aum,forgetting --seeds 0,1 --out runs/s
    prunekit data report --scores runs/s
    prunekit data select --scores runs/s --score aum --method ccs --keep 0.3 --out runs/keep30.npz
    prunekit data select --scores runs/s --recipe recipe.yaml --out runs/keep.npz
    prunekit data train  --dataset fashion-mnist --selection runs/keep30.npz --budget equal-epochs \\
                         --epochs 3 --kd --out runs/train30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import types
from pathlib import Path

from prunekit.core.errors import PrunekitError
from prunekit.data.pipeline import VISION_SCORES
from prunekit.data.runs import check_run_folder, check_writable, fingerprint, open_run
from prunekit.data.select import METHODS
from prunekit.data.table import AGGREGATES
from prunekit.data.text import TEXT_SCORES
from prunekit.data.train import BUDGET_KINDS

VISION_DATASETS = ("fashion-mnist", "mnist")
DATASETS = (*VISION_DATASETS, "brown")
FORMATS = ("parquet", "npz")
COMMANDS = ("score", "select", "train", "report")
SEED_MAX = 2**32 - 1
RECIPE_KEYS = ("score", "aggregate", "steps")


class CLIError(PrunekitError):
    """A bad command-line value; reported as one line, exit code 2."""


def _one_line_error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message}\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        _one_line_error(self, message)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` with its sub-commands to a parent CLI's ``subparsers``."""
    data = subparsers.add_parser("data", help="data pruning: score, select, train, report")
    data.error = types.MethodType(_one_line_error, data)
    sub = data.add_subparsers(dest="data_command", parser_class=_Parser, metavar="{score,select,train,report}")

    p = sub.add_parser("score", help="score every training example (resumable)")
    p.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--scores", default="el2n,aum,forgetting",
                   help=f"comma-separated; vision: {', '.join(VISION_SCORES)}; text: {', '.join(TEXT_SCORES)}")
    p.add_argument("--out", required=True, help="output folder (scores + manifest.json)")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds to average over")
    p.add_argument("--epochs", default="3", help="epochs of each scoring run")
    p.add_argument("--score-epochs", default="1", help="comma-separated epochs at which model scores are taken")
    p.add_argument("--limit", default=None, help="score only the first N examples / documents")
    p.add_argument("--format", default="parquet", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--model", default="smollm2-135m", help="causal LM for text scores")
    p.add_argument("--max-tokens", default="256", help="tokens per document for text scores")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("select", help="choose the examples to keep")
    p.add_argument("--scores", required=True, help="folder written by 'score'")
    p.add_argument("--score", default=None, help="score column to select on (default: the recipe's or the first)")
    p.add_argument("--recipe", default=None, help="YAML/JSON recipe: {score, aggregate, steps: [...]}")
    p.add_argument("--method", default=None, help=f"one of {', '.join(METHODS)}")
    p.add_argument("--keep", default=None, help="fraction in (0, 1] or count to keep")
    p.add_argument("--beta", default=None, help="CCS hard cutoff (fraction of the dataset)")
    p.add_argument("--bins", default=None, help="CCS strata")
    p.add_argument("--offset", default=None, help="band: fraction of hardest examples to skip")
    p.add_argument("--class-balanced", action="store_true")
    p.add_argument("--aggregate", default="mean", help=f"over seeds/checkpoints: {', '.join(AGGREGATES)}")
    p.add_argument("--seed", default="0")
    p.add_argument("--out", required=True, help="output .npz (indices, mask) plus a .json summary")

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
    p.add_argument("--out", default=None, help="write the markdown report here too")
    return data


# ---------------------------------------------------------------------------------- validation
def _choice(name: str, value: str, choices) -> str:
    if value not in choices:
        raise CLIError(f"{name} {value!r} is not one of: {', '.join(choices)}")
    return value


def _number(name: str, value, kind=float, lo=None, hi=None, lo_open=False, hi_open=False):
    try:
        v = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise CLIError(f"{name} {value!r} is not a valid {kind.__name__}") from None
    if kind is float and not math.isfinite(v):
        raise CLIError(f"{name} {value!r} is not a finite number")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi))):
        bound = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}{')' if hi_open else ']'}"
        raise CLIError(f"{name} {value!r} is out of range {bound}")
    return v


def _int_list(name: str, value: str, lo: int = 0, hi: int = SEED_MAX) -> list[int]:
    """A non-empty comma-separated list of distinct integers in [lo, hi]."""
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{name} {value!r} is not a comma-separated list of integers") from None
    if not out:
        raise CLIError(f"{name} {value!r} is empty; give at least one integer")
    for v in out:
        if not lo <= v <= hi:
            raise CLIError(f"{name} entry {v} is out of range [{lo}, {hi}]")
    if len(set(out)) != len(out):
        raise CLIError(f"{name} {value!r} repeats an entry; give each once")
    return out


def _seed(value) -> int:
    return _number("--seed", value, int, 0, SEED_MAX)


def _keep(value) -> float | int:
    v = _number("--keep", value, float, 0, None, lo_open=True)
    if v <= 1:
        return v
    if not v.is_integer():
        raise CLIError(f"--keep {value!r} is neither a fraction in (0, 1] nor a whole count >= 1")
    return int(v)


def _scores_dir(path: str) -> Path:
    folder = Path(path)
    if not (folder / "manifest.json").is_file():
        raise CLIError(f"--scores {path!r} has no manifest.json (run 'prunekit data score' first)")
    return folder


# ---------------------------------------------------------------------------------- commands
def _load_vision(name: str, split: str = "train"):
    from prunekit.datasets.vision import fashion_mnist, mnist

    return (fashion_mnist if name == "fashion-mnist" else mnist)(split)


def cmd_score(args) -> int:
    _choice("--dataset", args.dataset, DATASETS)
    _choice("--format", args.format, FORMATS)
    names = [s.strip() for s in args.scores.split(",") if s.strip()]
    allowed = TEXT_SCORES if args.dataset == "brown" else VISION_SCORES
    if not names:
        raise CLIError(f"--scores is empty; choices: {', '.join(allowed)}")
    for s in names:
        _choice("--scores entry", s, allowed)
    seeds = _int_list("--seeds", args.seeds)
    epochs = _number("--epochs", args.epochs, int, 1)
    score_epochs = _int_list("--score-epochs", args.score_epochs, 1, epochs)
    limit = None if args.limit is None else _number("--limit", args.limit, int, 1)
    max_tokens = _number("--max-tokens", args.max_tokens, int, 2)
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
        res = lm_document_scores(model, tok, [t for _, t in docs], max_tokens, progress=not args.no_progress)
        table = ScoreTable(manifest={**meta, "model": args.model, "max_tokens": max_tokens,
                                     "documents": [n for n, _ in docs]})
        for s in names:
            table.add(s, res[s], hashes)
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


def _read_recipe(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--recipe {path!r} does not exist or is not a file")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)  # plain YAML only: tags such as !!python/object are refused
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error (or absurd nesting) is one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CLIError(f"--recipe {path!r} is not valid {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'}: "
                       f"{first}") from None
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, dict) or "steps" not in data:
        raise CLIError(f"--recipe {path!r} must be a list of steps or a mapping with 'steps'")
    unknown = sorted(str(k) for k in data if k not in RECIPE_KEYS)
    if unknown:
        raise CLIError(f"--recipe {path!r}: unknown key(s) {unknown}; choices: {', '.join(RECIPE_KEYS)}")
    for key in ("score", "aggregate"):
        if key in data and not isinstance(data[key], str):
            raise CLIError(f"--recipe {path!r}: {key} {data[key]!r} must be a string")
    return data


def _check_select_out(path: str) -> Path:
    """``--out`` of ``select``: a new ``.npz`` (or one ``select`` wrote) in a writable place; nothing else is replaced."""
    from prunekit.data.select import Selection

    out = Path(path)
    if out.suffix != ".npz":
        raise CLIError(f"--out {path!r} must end in .npz (the selection; a .json summary is written beside it)")
    check_writable(out)
    summary = out.with_suffix(".json")
    if out.exists():
        if not out.is_file():
            raise CLIError(f"--out {path!r} exists and is not a file")
        try:
            Selection.load(out)
        except PrunekitError:
            raise CLIError(f"--out {path!r} exists and is not a prunekit selection; not replacing it") from None
    if summary.exists():
        try:
            data = json.loads(summary.read_text())
            ours = isinstance(data, dict) and {"kept", "steps", "n_total"} <= set(data)
        except (OSError, ValueError, RecursionError):
            ours = False
        if not ours:
            raise CLIError(f"--out {path!r}: {str(summary)!r} exists and is not a prunekit selection summary; "
                           "not replacing it")
    return out


def cmd_select(args) -> int:
    from prunekit.data.select import apply_recipe, ccs_default_beta, validate_recipe
    from prunekit.data.table import ScoreTable

    folder = _scores_dir(args.scores)
    _choice("--aggregate", args.aggregate, AGGREGATES)
    seed = _seed(args.seed)
    step_flags = {"--method": args.method, "--keep": args.keep, "--beta": args.beta, "--bins": args.bins,
                  "--offset": args.offset, "--class-balanced": args.class_balanced or None}
    if args.recipe is not None:
        given = [flag for flag, v in step_flags.items() if v is not None]
        if given:
            raise CLIError(f"give either --recipe or {given[0]} (the recipe's steps hold those settings), not both")
        recipe = _read_recipe(args.recipe)
    else:
        method = _choice("--method", args.method or "hardest", METHODS)
        if args.keep is None:
            raise CLIError("--keep is required without --recipe")
        for flag, value, only in (("--beta", args.beta, "ccs"), ("--bins", args.bins, "ccs"),
                                  ("--offset", args.offset, "band")):
            if value is not None and method != only:
                raise CLIError(f"{flag} {value!r} applies only to --method {only}, not {method!r}")
        step = {"method": method, "keep": _keep(args.keep), "class_balanced": args.class_balanced}
        if args.beta is not None:
            step["beta"] = _number("--beta", args.beta, float, 0, 1, hi_open=True)
        elif method == "ccs":
            keep = step["keep"]
            step["beta"] = ccs_default_beta(1 - keep) if isinstance(keep, float) else 0.0
        if args.bins is not None:
            step["bins"] = _number("--bins", args.bins, int, 1)
        if args.offset is not None:
            step["offset"] = _number("--offset", args.offset, float, 0, 1, hi_open=True)
        recipe = {"steps": [step]}
    steps = validate_recipe(recipe["steps"])
    out = _check_select_out(args.out)
    table = ScoreTable.load(folder)
    score = args.score or recipe.get("score") or table.score_names[0]
    _choice("--score", score, table.score_names)
    aggregate = _choice("recipe aggregate", recipe.get("aggregate", args.aggregate), AGGREGATES)
    values = table.vector(score, aggregate=aggregate)
    labels = table.labels()
    needs_labels = any(s.get("class_balanced") for s in steps)
    if needs_labels and (labels < 0).any():
        raise CLIError("class_balanced needs labels, but this score table has none")
    sel = apply_recipe(values, steps, labels=labels if needs_labels else None, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.npz")  # written beside, then renamed: never half a file
    sel.save(tmp)
    tmp.replace(out)
    summary = {"scores": str(folder), "score": score, "aggregate": aggregate, "steps": steps, "kept": len(sel),
               "n_total": sel.n_total, "fraction_removed": sel.fraction_removed}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"kept {len(sel)} of {sel.n_total} ({100 * sel.fraction_removed:.1f}% removed) -> {out}")
    return 0


def _teacher_logits(cache: Path, n: int):
    """Cached teacher logits (safetensors), or ``None`` when there are none yet."""
    from prunekit.data.runs import load_state

    if not cache.is_file():
        return None
    logits = load_state(cache).get("logits")  # safetensors + JSON: reading it never runs code
    if not (hasattr(logits, "shape") and logits.ndim == 2 and logits.shape[0] == n and logits.is_floating_point()):
        raise CLIError(f"{str(cache)!r} does not hold the teacher logits of {n} examples; delete it to retrain the "
                       "teacher")
    return logits


def cmd_train(args) -> int:
    import numpy as np
    import torch

    from prunekit.data.runs import save_state
    from prunekit.data.scores._common import batched_logits
    from prunekit.data.select import Selection
    from prunekit.data.train import Budget, accuracy, fit, kd_defaults
    from prunekit.zoo import SmallCNN

    _choice("--dataset", args.dataset, VISION_DATASETS)
    _choice("--budget", args.budget, BUDGET_KINDS)
    epochs = _number("--epochs", args.epochs, float, 0, None, lo_open=True)
    seed = _seed(args.seed)
    temperature = None if args.temperature is None else _number("--temperature", args.temperature, float, 0,
                                                                None, lo_open=True)
    alpha = None if args.alpha is None else _number("--alpha", args.alpha, float, 0, 1)
    if not args.kd and (temperature is not None or alpha is not None):
        flag = "--temperature" if temperature is not None else "--alpha"
        raise CLIError(f"{flag} {args.temperature if temperature is not None else args.alpha!r} applies only "
                       "with --kd")
    if not Path(args.selection).is_file():
        raise CLIError(f"--selection {args.selection!r} does not exist or is not a file")
    check_run_folder(args.out, "data train")  # before any data is loaded or trained on
    sel = Selection.load(args.selection)  # checked: integer indices in range, no repeats
    if len(sel) == 0:
        raise CLIError(f"--selection {args.selection!r} keeps no examples")
    x, y = _load_vision(args.dataset).tensors()
    xt, yt = _load_vision(args.dataset, "test").tensors()
    if sel.n_total != len(x):
        raise CLIError(f"--selection was made on {sel.n_total} examples but {args.dataset} has {len(x)}")
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
            tmp = cache.with_name(cache.name + ".tmp")
            save_state(tmp, {"logits": teacher_logits})
            tmp.replace(cache)
    torch.manual_seed(seed)
    model = SmallCNN()
    steps = budget.steps(len(sel), len(x), 128)
    fit(model, x, y, np.asarray(sel.indices), steps=steps, seed=seed, teacher_logits=teacher_logits,
        checkpoint_path=out / "student.ckpt", progress=not args.no_progress, **kd)
    acc = accuracy(model, xt, yt)
    result = {"selection": args.selection, "kept": len(sel), "fraction_removed": sel.fraction_removed,
              "budget": args.budget, "epochs": epochs, "steps": steps, "kd": kd or None, "seed": seed,
              "test_accuracy": acc, "threads": torch.get_num_threads()}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"test accuracy {100 * acc:.2f}% ({len(sel)} examples, {steps} steps) -> {out / 'result.json'}")
    return 0


def report_markdown(folder: str | Path) -> str:
    """Per-score summary and pairwise seed stability (Spearman, Kendall) as markdown."""
    import numpy as np

    from prunekit.data.table import ScoreTable, stability_report

    table = ScoreTable.load(folder)
    lines = [f"# Score report: {folder}", "", f"{table.n_examples()} examples, {len(table)} rows.", "",
             "| score | direction | runs (seed, checkpoint) | mean | std | min | max |", "|---|---|---|---|---|---|---|"]
    for s in table.score_names:
        v = table.vector(s)
        lines.append(f"| {s} | {table.direction(s)} | {table.runs(s)} | {np.nanmean(v):.4g} | {np.nanstd(v):.4g} "
                     f"| {np.nanmin(v):.4g} | {np.nanmax(v):.4g} |")
    stab = stability_report(table)
    lines += ["", "## Stability between seeds", ""]
    if stab:
        lines += ["| score | seeds | Spearman | Kendall |", "|---|---|---|---|"]
        lines += [f"| {r['score']} | {r['seed_a']} vs {r['seed_b']} | {r['spearman']:.3f} | {r['kendall']:.3f} |"
                  for r in stab]
    else:
        lines.append("Only one seed per score: nothing to compare.")
    return "\n".join(lines) + "\n"


REPORT_TITLE = "# Score report:"


def cmd_report(args) -> int:
    folder = _scores_dir(args.scores)
    if args.out:
        out = Path(args.out)
        check_writable(out)
        if out.exists():
            try:
                ours = out.is_file() and out.read_text(errors="replace").startswith(REPORT_TITLE)
            except OSError:
                ours = False
            if not ours:
                raise CLIError(f"--out {args.out!r} exists and is not a prunekit score report; not replacing it")
    text = report_markdown(folder)
    if args.out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text, end="")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed ``prunekit data ...`` command; returns the exit code.

    Every bad value, refused output or unreadable file is one line on stderr and exit code 2;
    Ctrl-C is one line and exit code 130 (rerunning a ``score``/``train`` command resumes it).
    """
    command = getattr(args, "data_command", None)
    handlers = {"score": cmd_score, "select": cmd_select, "train": cmd_train, "report": cmd_report}
    if command not in handlers:
        print(f"prunekit data: error: command {command!r} is not one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return handlers[command](args)
    except (ValueError, TypeError, KeyError) as e:  # PrunekitError (CLIError) is a ValueError
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"prunekit data {command}: error: {_one_line(msg)}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permission denied, a file vanished: one line, not a traceback
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        print(f"prunekit data {command}: error: cannot read or write{where}: {e.strerror or _one_line(e)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; rerun the same command to resume" if command in ("score", "train") else ""
        print(f"prunekit data {command}: interrupted{hint}", file=sys.stderr)
        return 130


def _one_line(message) -> str:
    lines = str(message).strip().splitlines()
    return lines[0] if lines else type(message).__name__


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="prunekit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    add_parser(sub)
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
