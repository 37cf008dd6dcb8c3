"""``prunekit report MODEL_OR_FOLDER [--baseline DENSE]``: one page (Markdown or HTML) with PNG plots.

Sections, each where its data exists: what was run (the recipe in ``prunekit.json``); parameters
and size on disk; per-layer kept fraction (non-zero weights of each linear layer over the
baseline's weights of that layer, so unstructured sparsity and removed channels read alike);
perplexity (per token, and per byte and per word of the scored text, which compare models whose
vocabularies differ) and zero-shot task accuracy (with standard errors) against the baseline; the speed
receipt of a structured prune. A folder without ``prunekit.json`` (any model) gets the sections
that need only its weights. The page and its plots are written to a temporary folder beside the
destination and renamed into place (``OUT/report`` by default for a prunekit output).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from prunekit.core.errors import PrunekitError
from prunekit.core.markup import inline_html, md_escape, plot_text, split_cells
from prunekit.core.jsonout import dumps_json

REPORT_DIR = "report"
EXTRA = "pip install 'prunekit[report]'"
DEFAULT_LIMIT = 100
DEFAULT_NWINDOWS = 16
DEFAULT_TASKS = None  # every prunekit task


# ------------------------------------------------------------------ CLI

def add_parser(sub, add_task_args, add_output_args) -> None:
    r = sub.add_parser("report", help="one page with plots: per-layer sparsity or widths, perplexity and task "
                       "accuracy against a baseline, speed receipt, parameters and size on disk")
    r.add_argument("target", help="a model folder (a prunekit output or any saved model) or an embedded name")
    r.add_argument("--baseline", default=None, help="the dense model to compare with (default: the source model "
                   "named in TARGET/prunekit.json when it can be found; 'none' for no baseline)")
    r.add_argument("--out", default=None, help="folder of the page and its plots (default: TARGET/report for a "
                   "prunekit output, else ./NAME-report); must not exist unless --overwrite")
    r.add_argument("--overwrite", action="store_true", help="replace --out if it is a report prunekit wrote")
    r.add_argument("--format", choices=("md", "html"), default="md", help="Markdown (default) or HTML")
    r.add_argument("--text", default="brown:a", help="perplexity text (default brown:a)")
    r.add_argument("--nwindows", default=DEFAULT_NWINDOWS, help=f"perplexity windows of 512 tokens, or 'all' "
                   f"(default {DEFAULT_NWINDOWS})")
    add_task_args(r, limit=DEFAULT_LIMIT, lmeval=False)
    add_output_args(r)
    r.set_defaults(run=run_report)


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PrunekitError(f"the report's plots need matplotlib, which is not installed: {EXTRA}") from None


def _report_tasks(spec: str | None) -> tuple[bool, list[str]]:
    """(perplexity, prunekit task names) of the report's ``--tasks``: default all; ``none``: nothing."""
    from prunekit.core.registry import TASKS
    from prunekit.evaluate.cli import split_tasks

    if spec is None:
        return True, TASKS.names()
    if spec.strip().lower() == "none":
        return False, []
    run_ppl, ours, _ = split_tasks(spec, lm_eval_ok=False)
    return run_ppl, ours


def default_out(target: str) -> Path:
    from prunekit.core.io import read_manifest

    folder = Path(target).expanduser()
    if folder.is_dir() and read_manifest(folder):
        return folder / REPORT_DIR
    return Path.cwd() / f"{folder.name or 'model'}-report"


def default_baseline(target: str) -> str | None:
    """The source model named in the target's ``prunekit.json``, if it still resolves."""
    from prunekit.core.io import read_manifest
    from prunekit.models.loading import resolve_model_path

    folder = Path(target).expanduser()
    source = read_manifest(folder).get("source_model") if folder.is_dir() else None
    if not source:
        return None
    try:
        path = resolve_model_path(str(source))
    except (PrunekitError, OSError):
        return None
    return str(source) if Path(path).is_dir() else None


def report_inputs(out: Path, *models: str | None) -> tuple:
    """The folders a report reads, which its ``--out`` must stay clear of; a report in the ``report``
    folder of the prunekit output it describes is the one place inside an input it may go."""
    folders = tuple(str(m) for m in models if m)
    return tuple(f for f in folders if out != Path(f).expanduser().resolve() / REPORT_DIR)


SPEED_SIDES = ("parameters", "flops_per_token", "prefill_s", "decode_tokens_per_s")
SPEED_RATIOS = ("parameter_ratio", "flops_ratio", "prefill_speedup", "decode_speedup")


def check_speed_receipt(target: str) -> None:
    """The ``speed`` entry of the target's prunekit.json (structured pruning's receipt) has the numbers
    the report shows: checked before anything is measured, so a tampered entry is one line at once."""
    from prunekit.core.io import read_manifest

    folder = Path(target).expanduser()
    speed = read_manifest(folder).get("speed") if folder.is_dir() else None
    if not speed:
        return

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value

    where = f"prunekit.json of {str(target)!r}: speed"
    if not isinstance(speed, dict):
        raise PrunekitError(f"{where} must be an object, got {type(speed).__name__}")
    for side in ("dense", "pruned"):
        entry = speed.get(side)
        bad = [k for k in SPEED_SIDES if not isinstance(entry, dict) or not number(entry.get(k))]
        if bad:
            raise PrunekitError(f"{where}.{side}.{bad[0]} must be a number; the receipt was changed by hand "
                                "(prune again, or delete the speed entry)")
    bad = [k for k in SPEED_RATIOS if not number(speed.get(k))]
    if bad:
        raise PrunekitError(f"{where}.{bad[0]} must be a number; the receipt was changed by hand (prune again, or "
                            "delete the speed entry)")


def run_report(args) -> int:
    from prunekit.core.data_sources import check_count, check_source
    from prunekit.core.io import check_output
    from prunekit.evaluate.cli import parse_nwindows
    from prunekit.models.loading import load_config

    require_matplotlib()
    args.nwindows = parse_nwindows(args.nwindows)
    if args.limit is not None:
        check_count(args.limit, "--limit")
    check_count(args.batch_tokens, "--batch-tokens")
    run_ppl, tasks = _report_tasks(args.tasks)
    if run_ppl:
        check_source(args.text)
    load_config(args.target)
    check_speed_receipt(args.target)
    baseline = args.baseline if args.baseline is not None else default_baseline(args.target)
    if baseline and baseline.lower() == "none":
        baseline = None
    if baseline:
        load_config(baseline)
    out = Path(args.out).expanduser() if args.out else default_out(args.target)
    check_output(out, args.overwrite, inputs=report_inputs(out.resolve(), args.target, baseline))
    page = write_report(args.target, out, baseline=baseline, fmt=args.format, text=args.text,
                        nwindows=args.nwindows, perplexity_too=run_ppl, tasks=tasks, limit=args.limit,
                        batch_tokens=args.batch_tokens, progress=not args.quiet, overwrite=args.overwrite)
    if args.json:
        print(dumps_json({"model": str(args.target), "page": str(page), "folder": str(page.parent)}))
    else:
        print(f"report written to {page}")
    return 0


def report_after_prune(args) -> Path:
    """``prunekit prune --report``: the report of the new output against the input model, in OUT/report."""
    out = Path(args.out).expanduser().resolve()
    page = write_report(str(out), out / REPORT_DIR, baseline=str(args.model), nwindows=DEFAULT_NWINDOWS,
                        tasks=DEFAULT_TASKS, limit=DEFAULT_LIMIT, progress=not args.quiet)
    if not args.quiet:
        print(f"report written to {page}")
    return page


# ------------------------------------------------------------------ measuring

def model_facts(name: str, model) -> dict:
    """Parameters, non-zero parameters, size on disk and per-layer weights of a loaded model."""
    from prunekit.evaluate.sparsity import sparsity_report
    from prunekit.models.loading import resolve_model_path

    report = sparsity_report(model)
    folder = Path(resolve_model_path(name))
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return {
        "name": name,
        "parameters": report["parameters"],
        "nonzero_parameters": report["nonzero_parameters"],
        "disk_bytes": sum(f.stat().st_size for f in files) if files else None,
        "layers": [{"name": r["name"], "numel": r["shape"][0] * r["shape"][1], "kept": r["shape"][0] * r["shape"][1]
                    - r["zeros"], "shape": r["shape"]} for r in report["layers"]],
    }


def evaluate(model, tokenizer, text: str, nwindows: int | None, perplexity_too: bool, tasks: list[str],
             limit: int | None, batch_tokens: int, progress: bool) -> dict:
    from prunekit.core.registry import TASKS
    from prunekit.evaluate.perplexity import perplexity
    from prunekit.evaluate.scorer import score_items

    out: dict = {"tasks": {}}
    if perplexity_too:
        seqlen = min(512, getattr(model.config, "max_position_embeddings", 512) or 512)
        out["perplexity"] = perplexity(model, tokenizer, text, nwindows, seqlen, progress=progress).to_dict()
        out["perplexity"]["seqlen"] = seqlen
    for name in tasks:
        out["tasks"][name] = score_items(model, tokenizer, TASKS.build(name), limit, batch_tokens,
                                         progress=progress).to_dict()
    return out


def measure(name: str, text: str, nwindows: int | None, perplexity_too: bool, tasks: list[str],
            limit: int | None, batch_tokens: int, progress: bool) -> dict:
    from prunekit.models.loading import load_model, load_tokenizer

    model = load_model(name)
    facts = model_facts(name, model)
    if perplexity_too or tasks:
        facts["quality"] = evaluate(model, load_tokenizer(name), text, nwindows, perplexity_too, tasks, limit,
                                    batch_tokens, progress)
    return facts


# ------------------------------------------------------------------ plots

def _figure(width: float = 8, height: float = 3.6):
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


_BLOCK = re.compile(r"(.*?\.(\d+))\.")  # the block a layer belongs to: "model.layers.12" of "model.layers.12.mlp.up_proj"


def plot_layers(target: dict, baseline: dict | None, path: Path) -> None:
    """Kept fraction of every linear layer in model order, coloured by the layer's kind (q_proj,
    down_proj, ... in the order they first appear), the x axis labelled with the blocks."""
    base = {r["name"]: r["numel"] for r in (baseline or {}).get("layers", [])}
    rows = target["layers"]
    kinds = list(dict.fromkeys(r["name"].rsplit(".", 1)[-1] for r in rows))
    colours = {k: f"C{i % 10}" for i, k in enumerate(kinds)}
    fig = _figure(max(8, min(14, len(rows) / 16)), 3.6)
    ax = fig.add_subplot()
    for kind in kinds:
        xs = [i for i, r in enumerate(rows) if r["name"].rsplit(".", 1)[-1] == kind]
        ys = [rows[i]["kept"] / base.get(rows[i]["name"], rows[i]["numel"]) for i in xs]
        ax.bar(xs, ys, width=1.0, color=colours[kind], label=plot_text(kind))
    ax.set_ylim(0, 1.05)
    ax.set_xlim(-1, len(rows))
    starts = _block_starts([r["name"] for r in rows])
    if len(starts) > 1:
        every = -(-len(starts) // 16)  # at most 16 labels
        ax.set_xticks([i - 0.5 for i, _ in starts[::every]], [label for _, label in starts[::every]])
        for i, _ in starts[1:]:
            ax.axvline(i - 0.5, color="0.8", linewidth=0.5, zorder=0)
        ax.set_xlabel("block (its linear layers in model order)")
    else:
        ax.set_xlabel("linear layer (model order)")
    ax.set_ylabel("weights kept" + (" (of baseline)" if baseline else ""))
    ax.set_title("Per-layer kept fraction (non-zero weights / baseline weights)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path)


def _block_starts(names: list[str]) -> list[tuple[int, str]]:
    """(index of its first layer, block number) of each run of layers in the same numbered block."""
    starts, previous = [], None
    for i, name in enumerate(names):
        match = _BLOCK.match(name)
        key = match.group(1) if match else None
        if key is not None and key != previous:
            starts.append((i, match.group(2)))
        previous = key
    return starts


def plot_quality(target: dict, baseline: dict | None, path: Path) -> None:
    """Task accuracy (with standard-error bars and chance) and perplexity, target against baseline."""
    tq = target.get("quality", {})
    bq = (baseline or {}).get("quality", {})
    tasks = list(tq.get("tasks", {}))
    panels = (1 if tasks else 0) + (1 if "perplexity" in tq else 0)
    fig = _figure(4.5 * panels + 1, 3.6)
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    if tasks:
        ax = axes[0]
        series = [("baseline", bq, "C0"), ("target", tq, "C3")] if bq else [("target", tq, "C3")]
        width = 0.8 / len(series)
        for s, (label, quality, colour) in enumerate(series):
            values = [quality["tasks"][t]["acc"] for t in tasks]
            errors = [quality["tasks"][t].get("acc_stderr", 0) for t in tasks]
            xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(tasks))]
            ax.bar(xs, values, width, yerr=errors, capsize=3, color=colour, label=label)
        for i, t in enumerate(tasks):
            ax.hlines(tq["tasks"][t]["chance"], i - 0.45, i + 0.45, colors="k", linestyles="dashed", linewidth=1)
        ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy (acc)")
        ax.set_title("Zero-shot accuracy (dashed: chance)")
        ax.legend(fontsize=8)
    if "perplexity" in tq:
        ax = axes[-1]
        labels, values = (["baseline", "target"], [bq["perplexity"]["perplexity"], tq["perplexity"]["perplexity"]]) \
            if "perplexity" in bq else (["target"], [tq["perplexity"]["perplexity"]])
        ax.bar(labels, values, color=["C0", "C3"][-len(values):])
        ax.set_ylabel("perplexity (lower is better)")
        ax.set_title("Perplexity")
        for i, v in enumerate(values):
            ax.annotate(f"{v:.1f}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.savefig(path)


def plot_speed(speed: dict, path: Path) -> None:
    """The speed receipt as ratios to dense: parameters and FLOPs (pruned / dense, lower is smaller) and
    prefill and decode speed-ups (dense time / pruned time, higher is faster)."""
    labels = ["parameters\n(pruned / dense)", "FLOPs per token\n(pruned / dense)", "prefill speed-up",
              "decode speed-up"]
    values = [speed["parameter_ratio"], speed["flops_ratio"], speed["prefill_speedup"], speed["decode_speedup"]]
    fig = _figure(6.5, 3.2)
    ax = fig.add_subplot()
    ax.barh(labels, values, color=["C0", "C0", "C2", "C2"])
    ax.axvline(1.0, color="k", linewidth=1, linestyle="dashed")
    ax.set_xlim(0, max(values + [1.0]) * 1.18)  # room for the labels
    for i, v in enumerate(values):
        ax.annotate(f"{v:.2f}x", (v, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8,
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"})
    ax.set_xlabel("ratio (dashed: dense)")
    threads = speed.get("threads", "?")
    ax.set_title(f"Speed receipt (median of {plot_text(speed.get('runs', '?'))} runs, {plot_text(threads)} "
                 f"thread{'' if threads == 1 else 's'})")
    fig.savefig(path)


# ------------------------------------------------------------------ the page

def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(data: dict, plots: dict[str, str]) -> str:
    t, b, manifest = data["target"], data.get("baseline"), data.get("manifest") or {}
    lines = [f"# prunekit report: {md_escape(t['name'])}", ""]
    lines.append(f"Baseline: {md_escape(b['name']) if b else 'none'}. prunekit {md_escape(data['version'])}.")
    lines.append("")
    steps = manifest.get("steps") if isinstance(manifest, dict) else None
    if steps:
        lines += ["## What was run", ""]
        for step in steps:
            keys = ("kind", "method", "sparsity", "pattern", "allocation", "structure")
            shown = ", ".join(f"{k} {md_escape(step[k])}" for k in keys
                              if isinstance(step, dict) and step.get(k) is not None)
            lines.append(f"- {shown}")
        calib = manifest.get("calibration") or {}
        if isinstance(calib, dict) and calib:
            lines.append(f"- calibration: {', '.join(f'{md_escape(k)} {md_escape(v)}' for k, v in calib.items())}")
        outcome = _outcome(manifest.get("result"))
        if outcome:
            lines.append(f"- result: {outcome}")
        lines.append("")
    elif not manifest:
        lines += ["No prunekit.json in the target: the sections that need its recipe or speed receipt are left out.",
                  ""]
    lines += ["## Size", ""]
    rows = [["target", f"{t['parameters']:,}", f"{t['nonzero_parameters']:,}", _size(t["disk_bytes"])]]
    if b:
        rows.insert(0, ["baseline", f"{b['parameters']:,}", f"{b['nonzero_parameters']:,}", _size(b["disk_bytes"])])
        rows.append(["target / baseline", f"{t['parameters'] / b['parameters']:.3f}",
                     f"{t['nonzero_parameters'] / b['nonzero_parameters']:.3f}",
                     f"{t['disk_bytes'] / b['disk_bytes']:.3f}" if t["disk_bytes"] and b["disk_bytes"] else "-"])
    lines += _table(["model", "parameters", "non-zero parameters", "size on disk (safetensors)"], rows) + [""]
    if b and t["parameters"] == b["parameters"] and t["nonzero_parameters"] < b["nonzero_parameters"]:
        lines += ["The zeros of unstructured or N:M sparsity are stored like any other weight: the folder is as large "
                  "as the baseline's and runs at the same speed on dense kernels (structured pruning removes "
                  "channels, heads or blocks and shrinks both).", ""]
    lines += ["## Per-layer kept fraction", "", f"![per-layer kept fraction]({plots['layers']})", ""]
    quality = t.get("quality")
    if quality:
        lines += ["## Quality", ""]
        rows = []
        bq = (b or {}).get("quality", {})
        if "perplexity" in quality:
            p = quality["perplexity"]
            base = bq.get("perplexity", {}).get("perplexity")
            rows.append([f"perplexity ({p['windows']} x {p['seqlen']} tokens of {md_escape(data['text'])}, "
                         f"{p['scored']:,} scored)", f"{base:.2f}" if base else "-", f"{p['perplexity']:.2f}",
                         f"{p['perplexity'] / base:.2f}x" if base else "-"])
            rows += _per_byte_rows(p, bq.get("perplexity", {}))
        for name, r in quality["tasks"].items():
            br = bq.get("tasks", {}).get(name)
            for metric in ("acc", "acc_norm"):
                if metric not in r:
                    continue
                cell = f"{r[metric]:.3f} ± {r[metric + '_stderr']:.3f}"
                base = f"{br[metric]:.3f} ± {br[metric + '_stderr']:.3f}" if br else "-"
                delta = f"{r[metric] - br[metric]:+.3f}" if br else "-"
                rows.append([f"{md_escape(name)} v{md_escape(r['version'])} {metric} (n={r['n']}, "
                             f"chance {r['chance']:.2f})", base, cell, delta])
        lines += _table(["measure", "baseline", "target", "change"], rows) + [""]
        if "quality" in plots:
            lines += [f"![perplexity and accuracy]({plots['quality']})", ""]
        limit = data.get("limit")
        lines.append(f"Tasks: the first {limit} items of each (a seeded random sample)." if limit else
                     "Tasks: all items.")
        lines.append("")
    speed = manifest.get("speed") if isinstance(manifest, dict) else None
    if speed:
        d, p = speed["dense"], speed["pruned"]
        lines += ["## Speed receipt", ""]
        lines += _table(["", "dense", "pruned", "ratio"], [
            ["parameters", f"{d['parameters']:,}", f"{p['parameters']:,}", f"{speed['parameter_ratio']:.3f}"],
            ["GFLOPs / token", f"{d['flops_per_token'] / 1e9:.3f}", f"{p['flops_per_token'] / 1e9:.3f}",
             f"{speed['flops_ratio']:.3f}"],
            [f"prefill 1x{md_escape(speed['seq_len'])} (ms)", f"{d['prefill_s'] * 1e3:.0f}", f"{p['prefill_s'] * 1e3:.0f}",
             f"{speed['prefill_speedup']:.2f}x speed-up"],
            [f"decode {md_escape(speed['decode_tokens'])} tokens (tok/s)", f"{d['decode_tokens_per_s']:.1f}",
             f"{p['decode_tokens_per_s']:.1f}", f"{speed['decode_speedup']:.2f}x speed-up"],
        ]) + ["", f"![speed receipt]({plots['speed']})", ""]
    return "\n".join(lines)


def _per_byte_rows(p: dict, base: dict) -> list[list[str]]:
    """The perplexity's bits per byte and word perplexity rows (comparable across vocabularies), where known."""
    rows = []
    for key, label, digits in (("bits_per_byte", "bits per byte", 4), ("word_perplexity", "word perplexity", 2)):
        value, was = p.get(key), base.get(key)
        if value is None:
            continue
        what = (f"{label} ({p['bytes']:,} bytes of the scored text)" if key == "bits_per_byte" else
                f"{label} ({p['words']:,} words of the scored text)")
        change = "-" if not was else f"{value / was - 1:+.1%}" if key == "bits_per_byte" else f"{value / was:.2f}x"
        rows.append([what, f"{was:.{digits}f}" if was else "-", f"{value:.{digits}f}", change])
    return rows


def _outcome(result) -> str:
    """One line from the result in ``prunekit.json``: sparsity or removed fraction, time, peak memory."""
    if not isinstance(result, dict):
        return ""
    number = (int, float)
    parts = []
    if isinstance(result.get("sparsity"), number):
        parts.append(f"{result['sparsity']:.2%} of the targeted weights zero")
    if isinstance(result.get("removed_fraction"), number):
        parts.append(f"decoder blocks {result['removed_fraction']:.1%} smaller")
    timings = result.get("timings") if isinstance(result.get("timings"), dict) else {}
    seconds = timings.get("total_s", result.get("seconds"))
    if isinstance(seconds, number):
        parts.append(f"pruning took {seconds:,.1f} s")
    if isinstance(result.get("peak_rss_mb"), number):
        parts.append(f"peak RSS {result['peak_rss_mb']:,.0f} MB")
    if result.get("dtype") and result.get("device"):
        parts.append(f"{md_escape(result['dtype'])} on {md_escape(result['device'])}")
    return ", ".join(parts)


_OWN_IMAGE = re.compile(r"!\[([^\\\]]*)\]\(([a-z0-9_-]+\.png)\)")  # a plot this report drew, by its file name


def to_html(md: str) -> str:
    """The Markdown page as simple HTML (headings, paragraphs, tables, images, lists).

    Every text is HTML-escaped after its Markdown escapes are resolved (see :mod:`prunekit.core.markup`);
    the only images are the report's own PNGs beside the page; there are no links, scripts, or
    resources from elsewhere (the style sheet is inline)."""
    out = ["<!doctype html>", "<meta charset='utf-8'>", "<title>prunekit report</title>",
           "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 8px}img{max-width:100%}</style>"]
    table: list[list[str]] = []

    def flush():
        if table:
            out.append("<table>")
            for i, row in enumerate(table):
                tag = "th" if i == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{inline_html(c)}</{tag}>" for c in row) + "</tr>")
            out.append("</table>")
            table.clear()

    for line in md.split("\n"):  # not splitlines(): a line is what Markdown calls one
        if line.startswith("|"):
            cells = split_cells(line)
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        flush()
        image = _OWN_IMAGE.fullmatch(line)
        if line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")))
            out.append(f"<h{level}>{inline_html(line.lstrip('#').strip())}</h{level}>")
        elif image:
            out.append(f"<p><img alt='{inline_html(image.group(1))}' src='{image.group(2)}'></p>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{inline_html(line[2:])}</li></ul>")
        elif line:
            out.append(f"<p>{inline_html(line)}</p>")
    flush()
    return "\n".join(out) + "\n"


def write_report(target: str, out: str | Path, baseline: str | None = None, fmt: str = "md",
                 text: str = "brown:a", nwindows: int | None = DEFAULT_NWINDOWS, perplexity_too: bool = True,
                 tasks: list[str] | None = None, limit: int | None = DEFAULT_LIMIT, batch_tokens: int = 2048,
                 progress: bool = False, overwrite: bool = False) -> Path:
    """Measure ``target`` (and ``baseline``), draw the plots and write the page into ``out``
    atomically (the ``--out`` rules of :func:`prunekit.core.io.check_output`, with a ``prunekit.json``
    that marks the folder as a report prunekit wrote); returns the page's path. ``tasks`` None: every
    prunekit task."""
    from prunekit import __version__
    from prunekit.core.io import atomic_output, check_output, read_manifest, write_json, write_manifest, write_text
    from prunekit.core.registry import TASKS

    require_matplotlib()
    out = Path(out).expanduser().resolve()
    inputs = report_inputs(out, target, baseline)
    check_output(out, overwrite, inputs=inputs)
    tasks = TASKS.names() if tasks is None else tasks
    folder = Path(target).expanduser()
    data = {"version": __version__, "text": text, "limit": limit,
            "manifest": read_manifest(folder) if folder.is_dir() else {}}
    started = time.perf_counter()
    data["target"] = measure(target, text, nwindows, perplexity_too, tasks, limit, batch_tokens, progress)
    data["baseline"] = measure(baseline, text, nwindows, perplexity_too, tasks, limit, batch_tokens,
                               progress) if baseline else None
    data["seconds"] = time.perf_counter() - started
    with atomic_output(out, overwrite, inputs=inputs) as tmp:
        plots = {"layers": "layers.png"}
        plot_layers(data["target"], data["baseline"], tmp / plots["layers"])
        if data["target"].get("quality"):
            plots["quality"] = "quality.png"
            plot_quality(data["target"], data["baseline"], tmp / plots["quality"])
        speed = data["manifest"].get("speed") if isinstance(data["manifest"], dict) else None
        if speed:
            plots["speed"] = "speed.png"
            plot_speed(speed, tmp / plots["speed"])
        md = markdown(data, plots)
        page = tmp / f"report.{fmt}"
        write_text(page, md + "\n" if fmt == "md" else to_html(md))
        write_json(tmp / "report.json", {k: v for k, v in data.items() if k != "manifest"}, indent=1)
        write_manifest(tmp, {"report": {"target": str(target), "baseline": baseline, "format": fmt}})
    return out / f"report.{fmt}"
