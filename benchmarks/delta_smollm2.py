"""Delta pruning on real SmolLM2-135M pairs: DARE vs DAREx-q vs magnitude vs Wanda-style deltas.

The pairs are built by ``benchmarks/delta_pairs.py`` (SmolLM2-135M continued on Brown genre a, the
last 10 blocks' linear layers, 200 steps of 256 tokens; ``small``: lr 3e-5, ``large``: lr 3e-4,
``l2`` / ``l2-weak``: lr 3e-4 with an L2 penalty on the delta, DAREx-L2; and the classifier ``genre``)
and cached; this script builds them first when they are missing.

Evaluation: perplexity on the first ``--nwindows`` x 512 tokens of Brown genre a, text the
fine-tuning never saw. Calibration (DAREx-q, Wanda-style): ``--nsamples`` windows of 256 tokens from
the training part of genre a (random offsets, seed 0). For every drop rate p in 0.5, 0.9, 0.99:
DARE and DAREx-q (per-layer factor) with each of ``--seeds``, DAREx-q with one global factor (seed 0),
magnitude and Wanda-style (deterministic).

The classifier pair (``genre``: SmolLM2-135M fine-tuned to name the genre of a Brown passage) is
judged by accuracy on the first ``--limit`` items of the held-out split of the ``brown-genre`` task
(± the standard error over items), the base's zero-shot accuracy beside it; calibration:
``--nsamples`` windows of 256 tokens of its training prompts (passage, ``Genre:``, label). At each
drop rate: DARE with each of ``--seeds``, DAREx-q (layer and global) and magnitude with seed 0.

    python benchmarks/delta_smollm2.py --threads 1 --seeds 0,1,2 --pairs small,large,l2,l2-weak,genre
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
RESULTS = Path(__file__).parent / "results"
RATES = (0.5, 0.9, 0.99)
NOTES = "## Reading"  # a hand-written section after the tables that rewrites keep


def runs(seeds: list[int]) -> list[tuple[str, str, dict, list[int]]]:
    """(label, method, options, seeds) of every configuration measured at each drop rate."""
    return [("DARE", "dare", {}, seeds), ("DAREx-q (layer)", "darex-q", {"scope": "layer"}, seeds),
            ("DAREx-q (global)", "darex-q", {"scope": "global", "grid": 6}, seeds[:1]),
            ("magnitude", "magnitude", {}, [0]), ("Wanda-style", "wanda", {}, [0])]


def delta_stats(base, finetuned) -> dict:
    """Size of the delta over the linear layers that changed: relative norm, mean and max |D|, count."""
    num = den = 0.0
    total = changed = 0
    largest = 0.0
    mean_abs = 0.0
    for name, module in finetuned.named_modules():
        if not isinstance(module, torch.nn.Linear) or name == "lm_head":
            continue
        d = module.weight.detach() - base.get_submodule(name).weight.detach()
        if not d.any():
            continue
        num += float(d.pow(2).sum())
        den += float(base.get_submodule(name).weight.detach().pow(2).sum())
        total += d.numel()
        changed += int((d != 0).sum())
        largest = max(largest, float(d.abs().max()))
        mean_abs += float(d.abs().sum())
    return {"relative_norm": math.sqrt(num / den), "mean_abs": mean_abs / max(total, 1), "max_abs": largest,
            "entries": total, "nonzero": changed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="small,large", help="pairs to measure (an earlier run's other pairs with the "
                    "same protocol stay in the report)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--nwindows", type=int, default=8)
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--limit", type=int, default=240, help="classifier pairs: test items scored")
    ap.add_argument("--rates", default=",".join(map(str, RATES)), help="drop rates measured on the pairs of this run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "delta_smollm2.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from delta_pairs import CLASSIFIERS, SETTINGS, build, pair_settings, prompt_stream, training_windows

    from prunekit.core.data_sources import calibration_windows
    from prunekit.core.recipe import CalibrationConfig
    from prunekit.core.registry import TASKS
    from prunekit.evaluate.perplexity import perplexity
    from prunekit.evaluate.scorer import score_items
    from prunekit.models import load_model, load_tokenizer

    seeds = [int(s) for s in args.seeds.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    tok = load_tokenizer("smollm2-135m")
    base = load_model("smollm2-135m")

    def calibration(stream: torch.Tensor) -> CalibrationConfig:
        return CalibrationConfig(source=calibration_windows(stream, None, args.nsamples, 256, 0),
                                 nsamples=args.nsamples, seqlen=256, chunk_size=4)

    def ppl(model) -> tuple[float, None]:
        return perplexity(model, tok, "brown:a", nwindows=args.nwindows, seqlen=512).perplexity, None

    settings = {**vars(args), "pair_settings": SETTINGS}
    saved = Path(args.out).with_suffix(".json")
    same = ("seeds", "nwindows", "nsamples", "pair_settings")
    previous = json.loads(saved.read_text()) if saved.is_file() else {}
    if previous and all(previous["settings"].get(k) == settings[k] for k in same):
        report = {**previous, "settings": settings}  # pairs measured by an earlier run with the same protocol
    else:
        report = {"settings": settings, "base": ppl(base)[0], "pairs": {},
                  "checkpoint_bytes": sum(p.numel() * p.element_size() for p in base.parameters())}
    print(f"base {report['base']:.3f}", flush=True)
    for pair in args.pairs.split(","):
        folder = build(pair, log=lambda m: print(m, flush=True))
        if pair in CLASSIFIERS:  # accuracy on the task's held-out split; calibration: its training prompts
            task_settings = pair_settings(pair)
            test = TASKS.build(task_settings["task"])
            train_items = TASKS.build(task_settings["task"], task_settings["task_options"]).items()

            def score(model, test=test) -> tuple[float, float]:
                result = score_items(model, tok, test, limit=args.limit)
                return result.metrics["acc"], result.stderr["acc"]

            calib = calibration(prompt_stream(tok, train_items))
            configurations = [(label, method, options, seeds if method == "dare" else [0])  # DARE's seeds only
                              for label, method, options, _ in runs(seeds) if method != "wanda"]
            base_acc, base_err = score(base)
            extra = {"task": test.describe(), "limit": args.limit, "base": base_acc, "base_stderr": base_err}
            metric = "accuracy"
        else:  # perplexity on held-out Brown press; calibration: the training part of genre a
            stream = training_windows(tok, SETTINGS["genre"], SETTINGS["held_out_tokens"], 1).reshape(-1)
            score, calib, configurations, extra, metric = ppl, calibration(stream), runs(seeds), {}, "perplexity"
        report["pairs"][pair] = measure(pair, folder, base, score, metric, calib, configurations, rates, extra)
        report["load_average"] = os.getloadavg()  # the machine is shared: its 1/5/15-minute load after each pair
        saved.write_text(json.dumps(report, indent=2))
    write_markdown(report, Path(args.out))
    print(Path(args.out).read_text())


def measure(pair: str, folder: Path, base, score, metric: str, calib, configurations, rates, extra: dict) -> dict:
    """The fine-tuned model of ``pair`` and every configuration at every drop rate, scored by ``score``
    (``metric`` and its standard error, or None)."""
    from prunekit.delta.prune import prune_delta
    from prunekit.delta.step import DeltaStep
    from prunekit.models import load_model

    finetuned = load_model(folder)
    reference = {k: v.clone() for k, v in finetuned.state_dict().items()}
    entry = {"folder": str(folder), "finetune": json.loads((folder / "prunekit.json").read_text())["finetune"],
             "delta": delta_stats(base, finetuned), "metric": metric, **extra, "rows": []}
    entry["finetuned"], error = score(finetuned)
    if error is not None:
        entry["finetuned_stderr"] = error
    print(f"{pair}: fine-tuned {entry['finetuned']}; delta {entry['delta']}", flush=True)
    for p in rates:
        for label, method, options, method_seeds in configurations:
            values, errors, factors, seconds, kept = [], [], [], [], 0
            for seed in method_seeds:
                finetuned.load_state_dict(reference)
                t0 = time.perf_counter()
                result = prune_delta(base, finetuned, DeltaStep(method=method, sparsity=p, options=options,
                                                                seed=seed), calib)
                seconds.append(time.perf_counter() - t0)
                value, error = score(finetuned)
                values.append(value)
                errors.append(error)
                kept = result.delta_after
                layer = [r.factor for r in result.layers if r.factor is not None and r.nonzero_before]
                factors.append(result.factor if result.factor is not None else (
                    statistics.median(layer) if layer else None))
            row = {"p": p, "method": label, metric: values, "factor": factors, "kept": kept, "seconds": seconds}
            if any(e is not None for e in errors):
                row["stderr"] = errors
            entry["rows"].append(row)
            print(f"{pair} p={p} {label}: {values} factor {factors}", flush=True)
    return entry


def _cell(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _delta_line(d: dict) -> str:
    return (f"Delta over the trained layers: ||D|| / ||W_base|| = {d['relative_norm']:.4f}, mean |D| = "
            f"{d['mean_abs']:.2e}, max |D| = {d['max_abs']:.2e}, {d['nonzero']:,} nonzero entries.")


def _factor(row: dict) -> str:
    factors = [f for f in row["factor"] if f is not None]
    return f"{statistics.mean(factors):.3g}" if factors else "-"


def _size(row: dict) -> str:
    return f"{row['kept']:,} | {row['kept'] * 8 / 2**20:.1f} MiB"


def perplexity_section(pair: str, entry: dict, base: float) -> list[str]:
    ft = entry["finetune"]
    penalty = f", L2 penalty lambda {ft['l2']:g} on the delta (DAREx-L2)" if ft.get("l2") else ""
    lines = [f"## Pair `{pair}`: lr {ft['lr']:g}{penalty}, {ft['steps']} steps of {ft['seqlen']} tokens", "",
             f"Fine-tuned perplexity **{entry['finetuned']:.2f}** (base {base:.2f}). {_delta_line(entry['delta'])}", "",
             "| p | method | perplexity | factor | kept delta entries | sparse delta (int32 index + fp32 value) |",
             "|---|---|---|---|---|---|"]
    for row in entry["rows"]:
        lines.append(f"| {row['p']} | {row['method']} | {_cell(row['perplexity'])} | {_factor(row)} | {_size(row)} |")
    return lines + [""]


def accuracy_section(pair: str, entry: dict) -> list[str]:
    ft = entry["finetune"]
    lines = [f"## Pair `{pair}`: a classifier, {ft['task']} (lr {ft['lr']:g}, {ft['steps']} steps of "
             f"{ft['batch_size']} prompts, loss on the label token)", "",
             f"Accuracy on the first {entry['limit']} items of the held-out split of {entry['task']} (chance 0.25; "
             "± the standard error over items): base SmolLM2-135M (zero-shot) "
             f"**{entry['base']:.3f} ± {entry['base_stderr']:.3f}**, fine-tuned **{entry['finetuned']:.3f} ± "
             f"{entry['finetuned_stderr']:.3f}**. {_delta_line(entry['delta'])}", "",
             "| p | method | accuracy | ± stderr | factor | kept delta entries | sparse delta (int32 index + fp32 value) |",
             "|---|---|---|---|---|---|---|"]
    for row in entry["rows"]:
        lines.append(f"| {row['p']} | {row['method']} | {_cell(row['accuracy'], 3)} | "
                     f"{statistics.mean(row['stderr']):.3f} | {_factor(row)} | {_size(row)} |")
    return lines + [""]


def write_markdown(report: dict, path: Path) -> None:
    s = report["settings"]
    lines = ["# Delta pruning: DARE and its fixes on SmolLM2-135M fine-tuned on Brown press and on Brown genres", "",
             f"Command: `python benchmarks/delta_smollm2.py --threads 1 --seeds {s['seeds']} "
             f"--nwindows {s['nwindows']} --nsamples {s['nsamples']} --pairs PAIRS` (`--limit {s['limit']}` for "
             "the classifier); pairs from `benchmarks/delta_pairs.py`.", "",
             f"Perplexity on the first {s['nwindows']} x 512 tokens of Brown genre a (held out: the fine-tuning "
             f"trained on the rest of genre a). Calibration of DAREx-q and Wanda-style: {s['nsamples']} x 256 tokens "
             "from the training part of genre a (the classifier: from its training prompts). Random methods: mean "
             f"(min-max) over seeds {s['seeds']}. The delta is pruned in the trained layers (the last 10 blocks' "
             "linear layers; the other layers' deltas are zero). factor = the rescaling of the kept entries: DARE "
             "1/(1-p), DAREx-q (layer) the median over layers of the per-layer least-squares factor, DAREx-q "
             "(global) the chosen one of 6 candidates, geometric from 1 to 1/(1-p).", "",
             f"Base SmolLM2-135M: perplexity **{report['base']:.2f}**.", ""]
    for pair, entry in report["pairs"].items():
        if entry.get("metric") == "accuracy":
            lines += accuracy_section(pair, entry)
        else:
            lines += perplexity_section(pair, entry, report["base"])
    lines += [f"The full fine-tuned checkpoint: {report['checkpoint_bytes'] / 2**20:.0f} MiB (fp32).", ""]
    if "load_average" in report:
        lines += [f"{s['threads']} torch thread(s) on a shared CPU machine; load average (1/5/15 min) after the last "
                  f"pair: {' / '.join(f'{x:.1f}' for x in report['load_average'])}.", ""]
    notes = path.read_text().partition(NOTES)[1:] if path.exists() else ("", "")  # hand-written, kept
    path.write_text("\n".join(lines) + ("\n" + "".join(notes) if notes[0] else ""))


if __name__ == "__main__":
    main()
