"""Delta pruning on real SmolLM2-135M pairs: DARE vs DAREx-q vs magnitude vs Wanda-style deltas.

The pairs are built by ``benchmarks/delta_pairs.py`` (SmolLM2-135M continued on Brown genre a, the
last 10 blocks' linear layers, 200 steps of 256 tokens; ``small``: lr 3e-5, ``large``: lr 3e-4) and
cached; this script builds them first when they are missing.

Evaluation: perplexity on the first ``--nwindows`` x 512 tokens of Brown genre a, text the
fine-tuning never saw. Calibration (DAREx-q, Wanda-style): ``--nsamples`` windows of 256 tokens from
the training part of genre a (random offsets, seed 0). For every drop rate p in 0.5, 0.9, 0.99:
DARE and DAREx-q (per-layer factor) with each of ``--seeds``, DAREx-q with one global factor (seed 0),
magnitude and Wanda-style (deterministic).

    python benchmarks/delta_smollm2.py --threads 1
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
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "delta_smollm2.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from delta_pairs import SETTINGS, build, training_windows

    from prunekit.core.data_sources import calibration_windows
    from prunekit.core.recipe import CalibrationConfig
    from prunekit.delta.prune import prune_delta
    from prunekit.delta.step import DeltaStep
    from prunekit.evaluate.perplexity import perplexity
    from prunekit.models import load_model, load_tokenizer

    seeds = [int(s) for s in args.seeds.split(",")]
    tok = load_tokenizer("smollm2-135m")
    base = load_model("smollm2-135m")
    stream = training_windows(tok, SETTINGS["genre"], SETTINGS["held_out_tokens"], 1).reshape(-1)
    calib = CalibrationConfig(source=calibration_windows(stream, None, args.nsamples, 256, 0), nsamples=args.nsamples,
                              seqlen=256, chunk_size=4)

    def ppl(model) -> float:
        return perplexity(model, tok, "brown:a", nwindows=args.nwindows, seqlen=512).perplexity

    settings = {**vars(args), "pair_settings": SETTINGS}
    saved = Path(args.out).with_suffix(".json")
    same = ("seeds", "nwindows", "nsamples", "pair_settings")
    previous = json.loads(saved.read_text()) if saved.is_file() else {}
    if previous and all(previous["settings"].get(k) == settings[k] for k in same):
        report = {**previous, "settings": settings}  # pairs measured by an earlier run with the same protocol
    else:
        report = {"settings": settings, "base": ppl(base), "pairs": {},
                  "checkpoint_bytes": sum(p.numel() * p.element_size() for p in base.parameters())}
    print(f"base {report['base']:.3f}", flush=True)
    for pair in args.pairs.split(","):
        folder = build(pair, log=lambda m: print(m, flush=True))
        finetuned = load_model(folder)
        reference = {k: v.clone() for k, v in finetuned.state_dict().items()}
        entry = {"folder": str(folder), "finetune": json.loads((folder / "prunekit.json").read_text())["finetune"],
                 "delta": delta_stats(base, finetuned), "finetuned": ppl(finetuned), "rows": []}
        print(f"{pair}: fine-tuned {entry['finetuned']:.3f}; delta {entry['delta']}", flush=True)
        for p in RATES:
            for label, method, options, method_seeds in runs(seeds):
                values, factors, seconds, kept = [], [], [], 0
                for seed in method_seeds:
                    finetuned.load_state_dict(reference)
                    t0 = time.perf_counter()
                    result = prune_delta(base, finetuned, DeltaStep(method=method, sparsity=p, options=options,
                                                                    seed=seed), calib)
                    seconds.append(time.perf_counter() - t0)
                    values.append(ppl(finetuned))
                    kept = result.delta_after
                    layer = [r.factor for r in result.layers if r.factor is not None and r.nonzero_before]
                    factors.append(result.factor if result.factor is not None else (
                        statistics.median(layer) if layer else None))
                row = {"p": p, "method": label, "perplexity": values, "factor": factors, "kept": kept,
                       "seconds": seconds}
                entry["rows"].append(row)
                print(f"{pair} p={p} {label}: {values} factor {factors}", flush=True)
        report["pairs"][pair] = entry
        report["load_average"] = os.getloadavg()  # the machine is shared: its 1/5/15-minute load after each pair
        Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=2))
    write_markdown(report, Path(args.out))
    print(Path(args.out).read_text())


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def write_markdown(report: dict, path: Path) -> None:
    s = report["settings"]
    lines = ["# Delta pruning: DARE and its fixes on SmolLM2-135M fine-tuned on Brown press", "",
             f"Command: `python benchmarks/delta_smollm2.py --threads 1 --seeds {s['seeds']} "
             f"--nwindows {s['nwindows']} --nsamples {s['nsamples']}`; pairs from `benchmarks/delta_pairs.py`.", "",
             f"Perplexity on the first {s['nwindows']} x 512 tokens of Brown genre a (held out: the fine-tuning "
             f"trained on the rest of genre a). Calibration of DAREx-q and Wanda-style: {s['nsamples']} x 256 tokens "
             "from the training part of genre a. Random methods: mean (min-max) over seeds "
             f"{s['seeds']}. The delta is pruned in the trained layers (the last 10 blocks' linear layers; the "
             "other layers' deltas are zero). factor = the rescaling of the kept entries: DARE 1/(1-p), DAREx-q "
             "(layer) the median over layers of the per-layer least-squares factor, DAREx-q (global) the chosen "
             "one of 6 candidates, geometric from 1 to 1/(1-p).", "", f"Base SmolLM2-135M: perplexity **{report['base']:.2f}**.", ""]
    for pair, entry in report["pairs"].items():
        ft, d = entry["finetune"], entry["delta"]
        lines += [f"## Pair `{pair}`: lr {ft['lr']:g}, {ft['steps']} steps of {ft['seqlen']} tokens", "",
                  f"Fine-tuned perplexity **{entry['finetuned']:.2f}** (base {report['base']:.2f}). Delta over the "
                  f"trained layers: ||D|| / ||W_base|| = {d['relative_norm']:.4f}, mean |D| = {d['mean_abs']:.2e}, "
                  f"max |D| = {d['max_abs']:.2e}, {d['nonzero']:,} nonzero entries.", "",
                  "| p | method | perplexity | factor | kept delta entries | sparse delta (int32 index + fp32 value) |",
                  "|---|---|---|---|---|---|"]
        for row in entry["rows"]:
            factors = [f for f in row["factor"] if f is not None]
            factor = f"{statistics.mean(factors):.3g}" if factors else "-"
            lines.append(f"| {row['p']} | {row['method']} | {_cell(row['perplexity'])} | {factor} | {row['kept']:,} | "
                         f"{row['kept'] * 8 / 2**20:.1f} MiB |")
        lines.append("")
    lines += [f"The full fine-tuned checkpoint: {report['checkpoint_bytes'] / 2**20:.0f} MiB (fp32).", ""]
    if "load_average" in report:
        lines += [f"{s['threads']} torch thread(s) on a shared CPU machine; load average (1/5/15 min) after the last "
                  f"pair: {' / '.join(f'{x:.1f}' for x in report['load_average'])}.", ""]
    notes = path.read_text().partition(NOTES)[1:] if path.exists() else ("", "")  # hand-written, kept
    path.write_text("\n".join(lines) + ("\n" + "".join(notes) if notes[0] else ""))


if __name__ == "__main__":
    main()
