"""Zero-shot accuracy of SmolLM2-135M, dense and pruned 50% one-shot (magnitude, Wanda, SparseGPT).

Tasks: prunekit's offline tasks (``prunekit list tasks``), the first ``--limit`` items of each
(a seeded random sample), scored as lm-eval-harness scores them (acc and acc_norm of summed and
per-character log-likelihoods; greedy exact match for brown-lastword), each with its standard
error. Calibration: Brown genres b-r, ``--nsamples`` windows x 512 tokens at offsets drawn with
seed 0 (the tasks use genre a: held out). fp32, CPU. Results are appended row by row, so a
partial run keeps what it measured.

    .venv/bin/python benchmarks/zeroshot_smollm2.py [--limits wordnet-gloss=100,...] [--nsamples 16]
    # rows in parallel processes, then one table:
    .venv/bin/python benchmarks/zeroshot_smollm2.py --only wanda-50 --name zeroshot_smollm2_w   # (one per row)
    .venv/bin/python benchmarks/zeroshot_smollm2.py --only '' --merge zeroshot_smollm2_w,...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONFIGS = {
    "dense": None,
    "magnitude-50": dict(method="magnitude", sparsity=0.5, pattern="unstructured"),
    "wanda-50": dict(method="wanda", sparsity=0.5, pattern="per-row"),
    "sparsegpt-50": dict(method="sparsegpt", sparsity=0.5, pattern="unstructured"),
}
LIMITS = {"wordnet-gloss": 100, "brown-continuation": 24, "brown-lastword": 40}
RESULTS = Path(__file__).resolve().parent / "results"


def measure(name: str, limits: dict, nsamples: int, threads: int, nwindows: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    import prunekit
    from prunekit.core.recipe import CalibrationConfig, Recipe
    from prunekit.core.registry import TASKS
    from prunekit.evaluate.perplexity import perplexity
    from prunekit.evaluate.scorer import score_items
    from prunekit.models import load_model, load_tokenizer
    from prunekit.oneshot.step import PruneStep

    model, tok = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    row: dict = {"config": name}
    if CONFIGS[name]:
        t0 = time.perf_counter()
        prunekit.prune(model, Recipe([PruneStep(**CONFIGS[name])], CalibrationConfig(nsamples=nsamples)),
                       tokenizer=tok)
        row["prune_s"] = time.perf_counter() - t0
    row["perplexity"] = perplexity(model, tok, "brown:a", nwindows, 512).perplexity
    row["tasks"] = {task: score_items(model, tok, TASKS.build(task), limit).to_dict() for task, limit in limits.items()}
    return row


def table(rows: list[dict], limits: dict, nsamples: int, nwindows: int) -> str:
    names = list(limits)
    head = ["config", "perplexity"] + [f"{n} acc" for n in names] + ["wordnet-gloss acc_norm",
                                                                      "brown-continuation acc_norm", "mean acc"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        t = r["tasks"]
        cells = [r["config"], f"{r['perplexity']:.1f}"]
        cells += [f"{t[n]['acc']:.3f} ± {t[n]['acc_stderr']:.3f}" for n in names]
        cells += [f"{t[n]['acc_norm']:.3f} ± {t[n]['acc_norm_stderr']:.3f}" for n in ("wordnet-gloss",
                                                                                      "brown-continuation")]
        cells.append(f"{sum(t[n]['acc'] for n in names) / len(names):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    chance = " | ".join(f"{n} {TASK_CHANCE.get(n, 0.25):.2f}" for n in names)
    items = ", ".join(f"{n} first {k}" for n, k in limits.items())
    return "\n".join([
        "Zero-shot accuracy of SmolLM2-135M (fp32, CPU), dense and 50% one-shot, on prunekit's offline tasks "
        f"(items: {items}; a seeded random sample of each task file, task version 1, seed 0). "
        f"± is the standard error over items. Chance: {chance}. Perplexity: Brown press, first {nwindows} x 512 tokens. "
        f"Calibration: Brown genres b-r, {nsamples} x 512 tokens (seed 0); the tasks use Brown genre a "
        "(held out) and WordNet 3.0.",
        "", *lines, ""])


TASK_CHANCE = {"wordnet-gloss": 0.25, "brown-continuation": 0.25, "brown-lastword": 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limits", default=",".join(f"{k}={v}" for k, v in LIMITS.items()))
    ap.add_argument("--nsamples", type=int, default=16, help="calibration windows of 512 tokens")
    ap.add_argument("--nwindows", type=int, default=4, help="perplexity windows of 512 tokens (Brown press)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=",".join(CONFIGS), help="configs to run ('' to merge only)")
    ap.add_argument("--name", default="zeroshot_smollm2", help="results file stem")
    ap.add_argument("--merge", default="", help="comma list of result stems whose rows join this table")
    args = ap.parse_args()
    limits = {k: int(v) for k, v in (x.split("=") for x in args.limits.split(","))}
    out = RESULTS / f"{args.name}.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    for stem in filter(None, args.merge.split(",")):
        extra = json.loads((RESULTS / f"{stem}.json").read_text())
        assert (extra["limits"], extra["nsamples"], extra["nwindows"]) == (limits, args.nsamples, args.nwindows), stem
        rows = [r for r in rows if r["config"] not in {e["config"] for e in extra["rows"]}] + extra["rows"]

    def save() -> None:
        rows.sort(key=lambda r: list(CONFIGS).index(r["config"]))
        out.write_text(json.dumps({"limits": limits, "nsamples": args.nsamples, "nwindows": args.nwindows,
                                   "rows": rows}, indent=1))
        (RESULTS / f"{args.name}.md").write_text(table(rows, limits, args.nsamples, args.nwindows))

    for name in filter(None, args.only.split(",")):
        started = time.perf_counter()
        row = measure(name, limits, args.nsamples, args.threads, args.nwindows)
        row["seconds"] = time.perf_counter() - started
        rows = [r for r in rows if r["config"] != name] + [row]
        save()
        print(f"{name}: {row['seconds']:.0f} s", flush=True)
    save()


if __name__ == "__main__":
    main()
