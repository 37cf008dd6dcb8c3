"""Zero-shot accuracy of SmolLM2-135M, dense, pruned one-shot (50% and 2:4) and structured (20%).

Tasks: prunekit's offline tasks (``prunekit list tasks``), the first ``--limit`` items of each
(a seeded random sample), scored as lm-eval-harness scores them (acc and acc_norm of summed and
per-character log-likelihoods; greedy exact match for brown-lastword), each with its standard
error. Calibration: Brown genres b-r, ``--nsamples`` windows x 512 tokens at offsets drawn with
seed 0 (the tasks use genre a: held out); Taylor's gradients on all of them. fp32, CPU. Results
are appended row by row, so a partial run keeps what it measured. The one-shot and structured
benchmark tables take their zero-shot columns from the results file (:func:`zeroshot_columns`).

    .venv/bin/python benchmarks/zeroshot_smollm2.py [--limits wordnet-gloss=100,...] [--nsamples 16]
    # rows in parallel processes, then one table:
    .venv/bin/python benchmarks/zeroshot_smollm2.py --only wanda-50 --name zeroshot_smollm2_w   # (one per row)
    .venv/bin/python benchmarks/zeroshot_smollm2.py --only '' --merge zeroshot_smollm2_w,...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

CONFIGS = {  # name -> (step kind, step fields); names of one-shot rows are those of oneshot_smollm2.py
    "dense": None,
    "magnitude-50": ("oneshot", dict(method="magnitude", sparsity=0.5, pattern="unstructured")),
    "wanda-50": ("oneshot", dict(method="wanda", sparsity=0.5, pattern="per-row")),
    "sparsegpt-50": ("oneshot", dict(method="sparsegpt", sparsity=0.5, pattern="unstructured")),
    "wanda-2:4": ("oneshot", dict(method="wanda", pattern="2:4")),
    "sparsegpt-2:4": ("oneshot", dict(method="sparsegpt", pattern="2:4")),
    "magnitude-2:4": ("oneshot", dict(method="magnitude", pattern="2:4")),
    # structured rows as in structured_smollm2.py: structured-<its key>-<percent removed>
    "structured-flap-20": ("structured", dict(method="flap", structure="mlp,heads", sparsity=0.2)),
    "structured-flap-uniform-20": ("structured", dict(method="flap", structure="mlp,heads", sparsity=0.2,
                                                      widths="uniform")),
    "structured-magnitude-20": ("structured", dict(method="magnitude", structure="mlp,heads", sparsity=0.2)),
    "structured-taylor-20": ("structured", dict(method="taylor", structure="mlp,heads", sparsity=0.2)),
    "structured-depth-20": ("structured", dict(method="flap", structure="blocks", remove=6)),  # 6 of 30 blocks
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
    from prunekit.structured.recipe import StructuredStep, apply_step

    model, tok = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    row: dict = {"config": name}
    if CONFIGS[name]:
        kind, fields = CONFIGS[name]
        calibration = CalibrationConfig(nsamples=nsamples)
        t0 = time.perf_counter()
        if kind == "oneshot":
            prunekit.prune(model, Recipe([PruneStep(**fields)], calibration), tokenizer=tok)
        else:
            result = apply_step(model, StructuredStep(**fields), calibration, tok)
            row.update(removed_fraction=result.removed_fraction, parameters=result.parameters_after)
        row["prune_s"] = time.perf_counter() - t0
    row["perplexity"] = perplexity(model, tok, "brown:a", nwindows, 512).perplexity
    row["tasks"] = {task: score_items(model, tok, TASKS.build(task), limit).to_dict() for task, limit in limits.items()}
    return row


def mean_acc(tasks: dict) -> tuple[float, float]:
    """Mean of the tasks' accuracies and its standard error (the tasks' items are independent samples:
    sqrt of the summed squared standard errors over the number of tasks)."""
    accs = [t["acc"] for t in tasks.values()]
    return sum(accs) / len(accs), math.sqrt(sum(t["acc_stderr"] ** 2 for t in tasks.values())) / len(accs)


def acc_cells(tasks: dict, names: list[str]) -> list[str]:
    """acc ± standard error of each task, then their mean ± its standard error."""
    mean, se = mean_acc({n: tasks[n] for n in names})
    return [f"{tasks[n]['acc']:.3f} ± {tasks[n]['acc_stderr']:.3f}" for n in names] + [f"{mean:.3f} ± {se:.3f}"]


def describe(config: str) -> str:
    if CONFIGS[config] is None:
        return "dense"
    kind, fields = CONFIGS[config]
    return f"{kind}: " + ", ".join(f"{k} {v}" for k, v in fields.items())


def table(rows: list[dict], limits: dict, nsamples: int, nwindows: int) -> str:
    names = list(limits)
    head = ["config", "perplexity"] + [f"{n} acc" for n in names] + ["mean acc", "wordnet-gloss acc_norm",
                                                                     "brown-continuation acc_norm"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        t = r["tasks"]
        cells = [r["config"], f"{r['perplexity']:.1f}"] + acc_cells(t, names)
        cells += [f"{t[n]['acc_norm']:.3f} ± {t[n]['acc_norm_stderr']:.3f}" for n in ("wordnet-gloss",
                                                                                      "brown-continuation")]
        lines.append("| " + " | ".join(cells) + " |")
    chance = " | ".join(f"{n} {TASK_CHANCE.get(n, 0.25):.2f}" for n in names)
    items = ", ".join(f"{n} first {k}" for n, k in limits.items())
    configs = "; ".join(f"{r['config']} = {describe(r['config'])}" for r in rows if CONFIGS[r["config"]])
    return "\n".join([
        "Zero-shot accuracy of SmolLM2-135M (fp32, CPU), dense and pruned, on prunekit's offline tasks "
        f"(items: {items}; a seeded random sample of each task file, task version 1, seed 0). "
        "± is the standard error over items; the mean's is sqrt(sum of the squared standard errors) / 3. "
        f"Chance: {chance}. Perplexity: Brown press, first {nwindows} x 512 tokens. "
        f"Calibration: Brown genres b-r, {nsamples} x 512 tokens (seed 0); the tasks use Brown genre a "
        "(held out) and WordNet 3.0. Rows: " + configs + ".",
        "", *lines, ""])


class ZeroShotColumns:
    """The zero-shot columns another benchmark table (one-shot, structured) adds to its rows, read
    from this benchmark's results file: each task's acc and the mean, each ± its standard error."""

    def __init__(self, stem: str = "zeroshot_smollm2") -> None:
        path = RESULTS / f"{stem}.json"
        self.stem = stem
        data = json.loads(path.read_text()) if path.exists() else {"limits": LIMITS, "nsamples": 16, "rows": []}
        self.limits, self.nsamples = data["limits"], data["nsamples"]
        self.rows = {r["config"]: r for r in data["rows"]}
        self.names = list(self.limits)
        self.titles = [f"{n} acc" for n in self.names] + ["zero-shot mean"]

    def cells(self, config: str) -> list[str]:
        row = self.rows.get(config)
        return acc_cells(row["tasks"], self.names) if row else ["n/m"] * len(self.titles)

    def note(self, own_calibration: str) -> str:
        items = " / ".join(str(k) for k in self.limits.values())
        return (f"Zero-shot columns ({', '.join(self.names)}: acc ± standard error over items; zero-shot mean = "
                "mean of the three ± its standard error; chance 0.25 / 0.25 / 0) come from "
                f"`benchmarks/zeroshot_smollm2.py` (`results/{self.stem}.md`): its models are pruned again with "
                f"that benchmark's own calibration, {self.nsamples} x 512 tokens of Brown b-r (seed 0; structured rows: "
                "Taylor's gradients on all of them), not this "
                f"table's {own_calibration}, and scored on the first {items} items of "
                f"{' / '.join(self.names)}; n/m = not measured (CPU time). Larger samples of some rows: "
                "`results/zeroshot_smollm2_large.md`.")


TASK_CHANCE = {"wordnet-gloss": 0.25, "brown-continuation": 0.25, "brown-lastword": 0.0}
NOTES = "## Notes"  # a hand-written section after the table, kept when the table is rewritten


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
        md = RESULTS / f"{args.name}.md"
        notes = "".join(md.read_text().partition(NOTES)[1:]) if md.exists() else ""
        md.write_text(table(rows, limits, args.nsamples, args.nwindows) + ("\n" + notes if notes else ""))

    for name in filter(None, args.only.split(",")):
        started = time.perf_counter()
        row = measure(name, limits, args.nsamples, args.threads, args.nwindows)
        row["seconds"] = time.perf_counter() - started
        row.update(threads=args.threads, load_after=os.getloadavg())  # 1/5/15-minute load: the machine is shared
        rows = [r for r in rows if r["config"] != name] + [row]
        save()
        print(f"{name}: {row['seconds']:.0f} s", flush=True)
    save()


if __name__ == "__main__":
    main()
