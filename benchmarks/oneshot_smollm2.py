"""One-shot pruning of SmolLM2-135M on the foundation protocol: quality, time and memory.

Protocol: fp32; EVAL = Brown press (ca01-ca44) as one stream, first 32 windows x 512 tokens,
perplexity = exp(mean per-window NLL); CALIB = Brown genres b-r, 64 windows x 512 tokens at
offsets drawn with seed 0. Each configuration runs in a fresh process so that its peak RSS
(ru_maxrss: model load + pruning) is its own. Pruning time excludes loading and evaluation.

    .venv/bin/python benchmarks/oneshot_smollm2.py --threads 2 [--repeats 3] [--only wanda-50,...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "dense": None,
    "magnitude-50": dict(method="magnitude", sparsity=0.5, pattern="unstructured"),
    "random-50": dict(method="random", sparsity=0.5, pattern="unstructured"),
    "wanda-50": dict(method="wanda", sparsity=0.5, pattern="per-row"),
    "sparsegpt-50": dict(method="sparsegpt", sparsity=0.5, pattern="unstructured"),
    "gblm-50": dict(method="gblm", sparsity=0.5, pattern="per-row"),
    "magnitude-2:4": dict(method="magnitude", pattern="2:4"),
    "random-2:4": dict(method="random", pattern="2:4"),
    "wanda-2:4": dict(method="wanda", pattern="2:4"),
    "sparsegpt-2:4": dict(method="sparsegpt", pattern="2:4"),
    "gblm-2:4": dict(method="gblm", pattern="2:4"),
    "wanda-owl-70": dict(method="wanda", sparsity=0.7, pattern="per-row", allocation="owl"),
    "sparsegpt-owl-70": dict(method="sparsegpt", sparsity=0.7, pattern="unstructured", allocation="owl"),
    "wanda-70": dict(method="wanda", sparsity=0.7, pattern="per-row"),
    "sparsegpt-70": dict(method="sparsegpt", sparsity=0.7, pattern="unstructured"),
}
TIMED = ("wanda-50", "sparsegpt-50")


def child(name: str, threads: int, evaluate: bool) -> dict:
    """Run one configuration in this process and return its measurements."""
    import resource

    import torch

    torch.set_num_threads(threads)
    import prunekit
    from prunekit.datasets.text import calibration_windows
    from prunekit.evaluate.perplexity import perplexity
    from prunekit.models import load_model, load_tokenizer
    from prunekit.recipe import CalibrationConfig, PruneStep, Recipe

    model, tok = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    out = {"config": name, "threads": threads}
    if CONFIGS[name] is None:  # dense: also time one plain forward pass of the calibration set
        windows = calibration_windows("brown", tok, 64, 512, 0)
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, 64, 8):
                model(input_ids=windows[i : i + 8], use_cache=False)
        out["forward_s"] = time.perf_counter() - t0
    else:
        recipe = Recipe([PruneStep(**CONFIGS[name])], CalibrationConfig(nsamples=64, seqlen=512, seed=0))
        result = prunekit.prune(model, recipe, tokenizer=tok, progress=False)
        out.update(prune_s=result.seconds, sparsity=result.sparsity, timings=result.timings)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if evaluate:
        out["perplexity"] = perplexity(model, tok, "brown:a", 32, 512).perplexity
    return out


def run_child(name: str, threads: int, evaluate: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--threads", str(threads)] + ([] if evaluate else ["--no-eval"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: dict, forward_s: float, threads: int) -> str:
    dense = rows["dense"]["perplexity"]
    lines = [
        f"SmolLM2-135M, fp32, {threads} torch threads. Perplexity on Brown press (32 x 512 tokens); "
        f"calibration 64 x 512 tokens of Brown genres b-r, seed 0. Plain forward of the calibration set: "
        f"{forward_s:.1f} s.",
        "",
        "| config | perplexity | x dense | prune time (s) | time / forward | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        t = r.get("prune_s_median", r.get("prune_s"))
        ts = "" if t is None else f"{t:.1f}"
        ratio = "" if t is None else f"{t / forward_s:.2f}"
        lines.append(f"| {name} | {r['perplexity']:.1f} | {r['perplexity'] / dense:.2f} | {ts} | {ratio} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats for Wanda/SparseGPT 50%% (median)")
    ap.add_argument("--only", default=None, help="comma list of configs")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "oneshot_smollm2.md"))
    ap.add_argument("--child", default=None)
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, not args.no_eval)))
        return
    names = args.only.split(",") if args.only else list(CONFIGS)
    if "dense" not in names:
        names.insert(0, "dense")
    rows, raw = {}, []
    for name in names:
        r = run_child(name, args.threads, evaluate=True)
        raw.append(r)
        if name in TIMED and args.repeats > 1:
            times = [r["prune_s"]] + [run_child(name, args.threads, False)["prune_s"] for _ in range(args.repeats - 1)]
            r["prune_s_runs"] = times
            r["prune_s_median"] = statistics.median(times)
        rows[name] = r
        print(json.dumps(r), flush=True)
    text = table(rows, rows["dense"]["forward_s"], args.threads)
    print(text)
    Path(args.out).write_text(text + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
