"""Data pruning on Fashion-MNIST: test accuracy of the reference CNN trained on a pruned training set.

For each seed, one full-data *scoring* run (60k examples, ``--score-epochs`` passes) records training
dynamics (forgetting events, AUM), is scored early (EL2N and last-layer GraNd after its first epoch,
as in "Deep Learning on a Data Diet") and then serves as the KD teacher. Scores are averaged over
the seeds. Then, for every removed fraction (30/50/70/90%), method and seed, a fresh SmallCNN trains
on the kept subset under an *equal-epochs* budget of ``--epochs`` passes over its subset, and is
tested on the 10k test set. A full-data run with the same budget is the reference.

Methods: random; EL2N, GraNd, forgetting, AUM (keep the hardest); CCS (stratified over AUM with
the default hard cutoff beta); random + KD (teacher = the same seed's full-data model).

Runs are appended to a JSONL log, so a rerun skips finished ones. Usage::

    python benchmarks/data_pruning_fashion_mnist.py [--epochs 2] [--seeds 0 1 2] [--quick]
    python benchmarks/data_pruning_fashion_mnist.py --fractions 0.9 --work /tmp/w --out /tmp/check  # one column
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from prunekit.data.dynamics import TrainingDynamics
from prunekit.data.scores import el2n_from_logits
from prunekit.data.scores._common import batched_logits, batched_logits_and_embeddings
from prunekit.data.select import ccs_default_beta, select
from prunekit.data.train import Budget, fit, kd_defaults
from prunekit.core.checkpoint import load_state
from prunekit.core.data_sources import fashion_mnist
from prunekit.core.train import accuracy
from prunekit.zoo import SmallCNN

RESULTS = Path(__file__).parent / "results"
FRACTIONS_REMOVED = (0.3, 0.5, 0.7, 0.9)
METHODS = ("random", "el2n", "grand", "forgetting", "aum", "ccs", "random+kd")
BATCH, LR = 128, 0.05


def grand_last_layer_from(logits: torch.Tensor, h: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    err = logits.softmax(1) - torch.nn.functional.one_hot(y, logits.shape[1]).float()
    return (err.norm(dim=1) * (h.pow(2).sum(1) + 1).sqrt()).numpy()


def scoring_run(x, y, xt, yt, seed: int, epochs: float, work: Path) -> dict:
    """Train on all data; return scores, teacher logits and test accuracy (cached in ``work``)."""
    out = work / f"full_seed{seed}.npz"
    if out.is_file():
        with np.load(out) as f:
            return dict(f)
    torch.manual_seed(seed)
    model = SmallCNN()
    dyn = TrainingDynamics(len(x))
    early_file = work / f"early_seed{seed}.npz"
    ckpt = work / f"full_seed{seed}.ckpt"

    def score_early(epoch: int, m: torch.nn.Module) -> None:
        if epoch == 0:  # "early in training": after the first pass, as in Paul et al. (2021)
            logits, h = batched_logits_and_embeddings(m, x)
            np.savez(early_file, el2n=el2n_from_logits(logits, y), grand=grand_last_layer_from(logits, h, y))

    if ckpt.is_file() and not early_file.is_file():  # stopped right after epoch 0, before the early scores
        state = load_state(ckpt)  # safetensors + JSON: reading it never runs code
        if state["epoch"] == 0:
            probe = SmallCNN()
            probe.load_state_dict(state["model"])
            score_early(0, probe)

    steps = Budget("equal-epochs", epochs).steps(len(x), len(x), BATCH)
    fit(model, x, y, steps=steps, batch_size=BATCH, lr=LR, seed=seed, dynamics=dyn, on_epoch_end=score_early,
        checkpoint_path=ckpt)
    with np.load(early_file) as f:
        early = dict(f)
    res = {
        **early,
        "forgetting": dyn.forgetting(),
        "aum": dyn.aum(),
        "teacher_logits": batched_logits(model, x).numpy(),
        "test_acc": np.float64(accuracy(model, xt, yt)),
    }
    np.savez(out, **res)
    return res


def subset_for(method: str, frac_removed: float, scores: dict, n: int, seed: int) -> np.ndarray:
    keep = round((1 - frac_removed) * n)
    if method in ("random", "random+kd"):
        return select(np.zeros(n), keep, "random", seed=seed)
    if method == "ccs":
        return select(scores["aum"], keep, "ccs", beta=ccs_default_beta(frac_removed), bins=50, seed=seed)
    return select(scores[method], keep, "hardest", seed=seed)


def run_subset(x, y, xt, yt, idx, seed, epochs, teacher_logits=None, frac_removed=0.0) -> float:
    torch.manual_seed(seed)
    model = SmallCNN()
    kd = kd_defaults(frac_removed) if teacher_logits is not None else {}
    steps = Budget("equal-epochs", epochs).steps(len(idx), len(x), BATCH)
    fit(model, x, y, idx, steps=steps, batch_size=BATCH, lr=LR, seed=seed, teacher_logits=teacher_logits, **kd)
    return accuracy(model, xt, yt)


def write_report(log: Path, meta: dict, md: Path, png: Path) -> None:
    """Markdown table, PNG plot, and the raw runs (``.jsonl``) plus a summary (``.json``) next to them."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["seed"] in meta["seeds"]]
    n_train, n_test = meta.get("n_train", 60000), meta.get("n_test", 10000)
    full = [r["acc"] for r in rows if r["method"] == "full"]
    table: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        if r["method"] != "full":
            table.setdefault((r["method"], r["removed"]), []).append(r["acc"])
    lines = [
        "# Data pruning on Fashion-MNIST (SmallCNN)",
        "",
        (f"Test accuracy (%) on the {n_test:,} test images, mean ± std (population std) over seeds "
        f"{meta['seeds']}; training set {n_train:,}; budget: equal epochs ({meta['epochs']} passes over whatever is kept, "
        f"batch {BATCH}, SGD + Nesterov + one-cycle lr {LR}, gradient norm clipped at 5). Threads: {meta['threads']}. "
        f"Wall time of the whole table: {meta['wall_min']:.1f} min (shared 2-core CPU){meta.get('wall_note', '')}."),
        "",
        (f"Scores come from full-data runs of {meta['score_epochs']} epochs (seeds {meta['score_seeds']}, "
         f"averaged); those runs are also the KD teachers (test accuracy {meta['teacher_acc']})."),
        "",
        f"Full data ({meta['epochs']} epochs): **{100 * np.mean(full):.2f} ± {100 * np.std(full):.2f}**"
        if full else "",
        "",
        "| method | " + " | ".join(f"{int(100 * f)}% removed" for f in FRACTIONS_REMOVED) + " |",
        "|---|" + "---|" * len(FRACTIONS_REMOVED),
    ]
    for m in METHODS:
        cells = []
        for f in FRACTIONS_REMOVED:
            v = table.get((m, f))
            short = f" (n={len(v)})" if v and len(v) < len(meta["seeds"]) else ""
            cells.append(f"{100 * np.mean(v):.2f} ± {100 * np.std(v):.2f}{short}" if v else "–")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", *shape_check(table), "", meta.get("notes", "")]
    md.write_text("\n".join(lines) + "\n")
    md.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "meta": {k: v for k, v in meta.items() if k != "notes"},
        "full_data": {"mean": float(np.mean(full)), "std": float(np.std(full)), "n": len(full)} if full else None,
        "cells": [{"method": m, "removed": f, "mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v),
                   "accs": v} for (m, f), v in sorted(table.items())],
    }
    md.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [100 * f for f in FRACTIONS_REMOVED]
    for m in METHODS:
        mu = [100 * np.mean(table[(m, f)]) if (m, f) in table else np.nan for f in FRACTIONS_REMOVED]
        sd = [100 * np.std(table[(m, f)]) if (m, f) in table else np.nan for f in FRACTIONS_REMOVED]
        ax.errorbar(xs, mu, yerr=sd, marker="o", capsize=3, label=m)
    if full:
        ax.axhline(100 * np.mean(full), color="gray", ls="--", label="full data")
    ax.set_xlabel("% of training set removed")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fashion-MNIST, SmallCNN, {meta['epochs']} epochs (equal-epochs budget)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


SCORE_BASED = ("el2n", "grand", "forgetting", "aum")


def shape_check(table: dict[tuple[str, float], list[float]]) -> list[str]:
    """Compare with the shape published for CIFAR-10 (Zheng et al. 2023, Fig. 1 / Table 1)."""

    def mean(m, f):
        return 100 * float(np.mean(table[(m, f)])) if (m, f) in table else float("nan")

    def sd(m, f):
        return 100 * float(np.std(table[(m, f)])) if (m, f) in table else float("nan")

    out = ["## Does Fashion-MNIST show the published CIFAR-10 shape?", ""]
    r30, r90 = mean("random", 0.3), mean("random", 0.9)
    at30 = ", ".join(f"{m} {mean(m, 0.3) - r30:+.2f}" for m in SCORE_BASED)
    ok30 = sum(mean(m, 0.3) >= r30 - sd("random", 0.3) for m in SCORE_BASED)
    out.append(f"* **30% removed, score-based ≥ random?** Difference to random ({r30:.2f}): {at30} points; "
               f"{ok30}/{len(SCORE_BASED)} scores are at or above random minus one std.")
    at90 = ", ".join(f"{m} {mean(m, 0.9) - r90:+.2f}" for m in SCORE_BASED)
    far = sum(mean(m, 0.9) < r90 - 10 for m in SCORE_BASED)
    out.append(f"* **90% removed, score-based far below random?** Difference to random ({r90:.2f}): {at90} points; "
               f"{far}/{len(SCORE_BASED)} are more than 10 points below.")
    c90 = mean("ccs", 0.9)
    out.append(f"* **90% removed, CCS ≥ random?** CCS {c90:.2f} ± {sd('ccs', 0.9):.2f} vs random "
               f"{r90:.2f} ± {sd('random', 0.9):.2f} ({c90 - r90:+.2f} points).")
    k = ", ".join(f"{int(100 * f)}%: {mean('random+kd', f) - mean('random', f):+.2f}" for f in FRACTIONS_REMOVED)
    out.append(f"* **random + KD vs random** (points): {k}.")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=1.0, help="passes over the kept subset (equal epochs)")
    ap.add_argument("--score-epochs", type=float, default=3.0, help="passes of the full-data scoring runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the subset runs")
    ap.add_argument("--score-seeds", type=int, nargs="+", default=[0],
                    help="seeds of the full-data scoring/teacher runs (scores are averaged over them)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="6k/2k examples, for a smoke test")
    ap.add_argument("--work", type=Path, default=Path(os.path.expanduser("~/.cache/prunekit/bench/data_pruning")))
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from the run log")
    ap.add_argument("--notes", default="", help="free text appended to the report")
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS_REMOVED), choices=FRACTIONS_REMOVED,
                    help="run only these fractions removed (columns)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of the .md/.json/.jsonl/.png report")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        work = args.work / ("quick" if args.quick else "full")
        if (work / "meta.json").is_file():
            meta = json.loads((work / "meta.json").read_text())
        else:  # still running / cut short: report what the log holds so far
            teacher = [100 * float(np.load(work / f"full_seed{s}.npz")["test_acc"]) for s in args.score_seeds]
            meta = {"seeds": args.seeds, "score_seeds": args.score_seeds, "epochs": args.epochs,
                    "threads": args.threads, "score_epochs": args.score_epochs, "wall_min": float("nan"),
                    "teacher_acc": f"{np.mean(teacher):.2f} ± {np.std(teacher):.2f}"}
        meta["notes"] = args.notes
        write_report(work / "runs.jsonl", meta, args.out / "data_pruning_fashion_mnist.md",
                     args.out / "data_pruning_fashion_mnist.png")
        return
    torch.set_num_threads(args.threads)
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    log = work / "runs.jsonl"
    x, y = fashion_mnist("train").tensors()
    xt, yt = fashion_mnist("test").tensors()
    if args.quick:
        x, y, xt, yt = x[:6000], y[:6000], xt[:2000], yt[:2000]
    done = set()
    if log.is_file():
        done = {(r["method"], r["removed"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())}
    t0 = time.time()
    full = {}
    for seed in args.score_seeds:
        full[seed] = scoring_run(x, y, xt, yt, seed, args.score_epochs, work)
        print(f"[{time.time() - t0:7.0f}s] scoring/teacher run seed {seed}: "
              f"{100 * float(full[seed]['test_acc']):.2f}%", flush=True)
    scores = {k: np.mean([full[s][k] for s in args.score_seeds], axis=0) for k in ("el2n", "grand", "forgetting", "aum")}
    np.savez(work / "scores_mean.npz", **scores)
    for seed in args.seeds:
        if ("full", 0.0, seed) not in done:
            acc = run_subset(x, y, xt, yt, np.arange(len(x)), seed, args.epochs)
            with log.open("a") as f:
                f.write(json.dumps({"method": "full", "removed": 0.0, "seed": seed, "acc": acc}) + "\n")
            print(f"[{time.time() - t0:7.0f}s] seed {seed} full data {100 * acc:.2f}%", flush=True)
        for frac in sorted(args.fractions, reverse=True):  # cheapest first, so a cut-short run has whole rows
            for method in METHODS:
                if (method, frac, seed) in done:
                    continue
                idx = subset_for(method, frac, scores, len(x), seed)
                teacher_seed = seed if seed in full else args.score_seeds[0]
                teacher = torch.as_tensor(full[teacher_seed]["teacher_logits"]) if method == "random+kd" else None
                acc = run_subset(x, y, xt, yt, idx, seed, args.epochs, teacher, frac)
                with log.open("a") as f:
                    f.write(json.dumps({"method": method, "removed": frac, "seed": seed, "acc": acc}) + "\n")
                print(f"[{time.time() - t0:7.0f}s] seed {seed} removed {frac:.0%} {method:11s} {100 * acc:.2f}%",
                      flush=True)
    teacher = [100 * float(full[s]["test_acc"]) for s in args.score_seeds]
    meta = {"seeds": args.seeds, "score_seeds": args.score_seeds, "epochs": args.epochs, "threads": args.threads, "score_epochs": args.score_epochs,
            "teacher_acc": f"{np.mean(teacher):.2f} ± {np.std(teacher):.2f}", "n_train": len(x), "n_test": len(xt),
            "wall_min": (time.time() - t0) / 60}
    (work / "meta.json").write_text(json.dumps(meta))
    if not args.quick:
        write_report(log, meta, args.out / "data_pruning_fashion_mnist.md", args.out / "data_pruning_fashion_mnist.png")
    else:
        write_report(log, meta, work / "quick.md", work / "quick.png")


if __name__ == "__main__":
    main()
