"""The three embedded families side by side: one-shot and structured pruning of SmolLM2-135M (Llama),
Gemma 3 270M and Qwen2.5-0.5B, plus bf16 against fp32 on SmolLM2.

Reduced protocol (the full one, 64 x 512 calibration and 32 x 512 evaluation tokens, takes hours
for the larger two on a shared 2-core machine): calibration = 16 windows x 256 tokens of Brown
genres b-r at offsets drawn with seed 0; evaluation = perplexity on the first 8 windows x 256 tokens
of Brown press (ca01-ca44); each window starts with the tokenizer's own prefix (Gemma's <bos>).
Every configuration runs in a fresh process through the CLI's own path (``prunekit prune``: one-shot
streamed from the cached folder, structured in memory without the speed receipt): prune time is
the pruning call without loading, peak RSS is the process's peak after pruning and saving (before
the evaluation loads the output; dense: after loading the model and reading each of its weights
once, since a loaded safetensors model is memory-mapped and pages never read do not count), saved size is the output's
safetensors files. FLAP-20 removes 20% of
the MLP and attention parameters of the blocks (global allocation, bias compensation); depth-20
removes 20% of the blocks (lowest block influence, 1 - cos(input, output)).

    .venv/bin/python benchmarks/families.py --threads 2 [--models gemma3-270m,...] [--only wanda-50,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b")
CONFIGS = {  # name: prune flags (None: the dense model)
    "dense": None,
    "magnitude-50": ["--method", "magnitude", "--sparsity", "0.5", "--pattern", "unstructured"],
    "wanda-50": ["--method", "wanda", "--sparsity", "0.5", "--pattern", "per-row"],
    "sparsegpt-50": ["--method", "sparsegpt", "--sparsity", "0.5", "--pattern", "unstructured"],
    "magnitude-2:4": ["--method", "magnitude", "--pattern", "2:4"],
    "wanda-2:4": ["--method", "wanda", "--pattern", "2:4"],
    "sparsegpt-2:4": ["--method", "sparsegpt", "--pattern", "2:4"],
    "flap-20": ["--structure", "mlp,heads", "--sparsity", "0.2", "--option", "receipt=false"],
    "depth-20": ["--structure", "blocks", "--sparsity", "0.2", "--option", "receipt=false"],
}
DTYPE_CONFIGS = ("dense", "wanda-50", "sparsegpt-50")  # bf16 against fp32 (SmolLM2)
CALIB = ["--calibration", "brown", "--nsamples", "16", "--seqlen", "256", "--seed", "0"]
EVAL_WINDOWS, EVAL_SEQLEN = 8, 256


def child(model: str, config: str, dtype: str, threads: int) -> dict:
    """One configuration in this process: prune through the CLI, then evaluate the output."""
    import torch

    torch.set_num_threads(threads)
    from prunekit.cli import main as cli
    from prunekit.core.memory import peak_rss_mb
    from prunekit.evaluate.perplexity import perplexity
    from prunekit.models import load_model, load_tokenizer
    from prunekit.models.loading import resolve_model_path

    out = {"model": model, "config": config, "dtype": dtype, "threads": threads}
    work = Path(tempfile.mkdtemp(prefix="prunekit-families-"))
    try:
        target = resolve_model_path(model)
        if CONFIGS[config] is not None:
            folder = work / "out"
            t0 = time.perf_counter()
            code = cli(["prune", "--model", model, "--out", str(folder), "--quiet", "--dtype", dtype,
                        *CALIB, *CONFIGS[config]])
            if code != 0:
                raise SystemExit(f"prunekit prune failed ({code})")
            out["wall_s"] = time.perf_counter() - t0
            result = json.loads((folder / "prunekit.json").read_text())["result"]
            out["prune_s"] = result.get("timings", {}).get("total_s", result.get("seconds"))
            out["removed_fraction"] = result.get("removed_fraction")
            out["sparsity"] = result.get("sparsity")
            target = str(folder)
        if CONFIGS[config] is not None:
            out["peak_rss_mb"] = peak_rss_mb()  # loading, pruning and saving
        out["saved_mb"] = sum(p.stat().st_size for p in Path(target).glob("*.safetensors")) / 2**20
        if CONFIGS[config] is None and dtype != "auto":  # the dense model as saved in that dtype
            itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
            out["saved_mb"] = out["saved_mb"] * itemsize / 4  # the cached folders are float32
        model_obj = load_model(target, dtype=dtype)
        if CONFIGS[config] is None:  # the dense model in memory: the weights are memory-mapped until read,
            with torch.no_grad():  # so every one is read once before the peak is taken
                for p in model_obj.parameters():
                    p.sum()
            out["peak_rss_mb"] = peak_rss_mb()
        tok = load_tokenizer(model)
        out["parameters"] = sum(p.numel() for p in model_obj.parameters())
        out["perplexity"] = perplexity(model_obj, tok, "brown:a", EVAL_WINDOWS, EVAL_SEQLEN).perplexity
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def run_child(model: str, config: str, dtype: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", model, config, dtype, "--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": str(threads)}
    load_before = round(os.getloadavg()[0], 2)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{model} {config} {dtype} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**row, "load_before": load_before, "load_after": round(os.getloadavg()[0], 2)}


def key(model: str, config: str, dtype: str) -> str:
    return f"{model}/{config}/{dtype}"


def conditions(rows: list[dict]) -> str:
    """The torch threads and the machine's 1-minute load average of these rows, as one phrase."""
    threads = sorted({r["threads"] for r in rows})
    loads = [r[k] for r in rows for k in ("load_before", "load_after") if k in r]
    text = f"torch threads: {', '.join(map(str, threads))} (column threads)"
    if loads:
        text += f"; 1-minute load average {min(loads):.1f}-{max(loads):.1f} on the 2 cores before/after the rows"
    if len(loads) < 2 * len(rows):
        text += f"; load not recorded for {len(rows) - len(loads) // 2} row(s) (run before it was)"
    return text


def table(raw: dict, missing: tuple[str, ...] = ()) -> str:
    lines = [
        "# The three embedded families",
        "",
        "Reduced protocol, CPU, one run each on a 2-core machine shared with other jobs (times are indicative; "
        "each model's threads and load are given with it). Calibration 16 x 256 tokens of Brown b-r (seed 0); "
        f"perplexity on the first {EVAL_WINDOWS} x {EVAL_SEQLEN} tokens of Brown press. Weights as converted "
        "(fp32, dequantized from the 4-bit GGUF). One-shot runs stream block by block (the CLI default); "
        "structured runs load the model. Peak RSS covers loading, pruning and saving (dense: the "
        "model loaded with every weight read once). Compare perplexities within a model, never across: "
        "the Qwen model is a code-tuned instruct model, SmolLM2 an instruct model, Gemma 3 270M a base model.",
        "",
    ]
    for model in MODELS:
        rows = {c: raw[key(model, c, "auto")] for c in CONFIGS if key(model, c, "auto") in raw}
        if "dense" not in rows:
            continue
        dense = rows["dense"]
        lines += [f"## {model}", "", f"{conditions(list(rows.values()))}.", "", "| config | perplexity | x dense | parameters | prune time (s) | peak RSS (MB) "
                  "| saved (MB) | threads |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in rows.items():
            t = f"{r['prune_s']:.0f}" if r.get("prune_s") else ""
            lines.append(f"| {name} | {r['perplexity']:.1f} | {r['perplexity'] / dense['perplexity']:.2f} | "
                         f"{r['parameters'] / 1e6:.1f}M | {t} | {r['peak_rss_mb']:.0f} | {r['saved_mb']:.0f} | {r['threads']} |")
        absent = [c for c in CONFIGS if c not in rows and model in missing]
        if absent:
            lines += ["", f"Not measured (no CPU time left in the session): {', '.join(absent)}."]
        lines.append("")
    rows = [(c, raw.get(key("smollm2-135m", c, "float32")), raw.get(key("smollm2-135m", c, "bfloat16")))
            for c in DTYPE_CONFIGS]
    rows = [r for r in rows if r[1] and r[2]]
    if rows:
        lines += ["## bf16 against fp32 (SmolLM2-135M, same protocol)", "",
                  f"{conditions([r for _, a, b in rows for r in (a, b)])}.", "",
                  "The model loaded, pruned, saved and evaluated in each dtype (statistics and Hessians accumulate "
                  "in fp32 either way).", "",
                  "| config | fp32 perplexity | bf16 perplexity | bf16 / fp32 | fp32 saved (MB) | bf16 saved (MB) "
                  "| fp32 peak RSS (MB) | bf16 peak RSS (MB) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, a, b in rows:
            lines.append(f"| {name} | {a['perplexity']:.2f} | {b['perplexity']:.2f} | "
                         f"{b['perplexity'] / a['perplexity']:.3f} | {a['saved_mb']:.0f} | {b['saved_mb']:.0f} | "
                         f"{a['peak_rss_mb']:.0f} | {b['peak_rss_mb']:.0f} |")
        lines.append("")
    return "\n".join(lines)


NOTES = "\n## Notes"  # a hand-written section at the end of the .md, kept when the table is rewritten


def write_md(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""
    path.write_text(text + "\n" + notes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--only", default=None, help="comma list of configs")
    ap.add_argument("--dtypes", action="store_true", help="also bf16 against fp32 on SmolLM2")
    ap.add_argument("--fresh", action="store_true", help="recompute rows already in the results file")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "families"))
    ap.add_argument("--table", action="store_true", help="only rewrite the .md from the .json")
    ap.add_argument("--missing", default="", help="models whose absent configs the table lists as not measured")
    ap.add_argument("--child", nargs=3, default=None, metavar=("MODEL", "CONFIG", "DTYPE"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.threads)))
        return
    raw_path = Path(args.results + ".json")
    raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    missing = tuple(m for m in args.missing.split(",") if m)
    if args.table:
        write_md(Path(args.results + ".md"), table(raw, missing))
        print(table(raw, missing))
        return
    names = args.only.split(",") if args.only else list(CONFIGS)
    jobs = [(m, c, "auto") for m in args.models.split(",") if m for c in names]
    if args.dtypes:
        jobs += [("smollm2-135m", c, d) for d in ("float32", "bfloat16") for c in DTYPE_CONFIGS if c in names]
    for model, config, dtype in jobs:
        if key(model, config, dtype) in raw and not args.fresh:
            continue
        try:
            raw[key(model, config, dtype)] = run_child(model, config, dtype, args.threads)
        except RuntimeError as err:
            print(err, file=sys.stderr, flush=True)
            continue
        print(json.dumps(raw[key(model, config, dtype)]), flush=True)
        raw_path.write_text(json.dumps(raw, indent=1) + "\n")
    text = table(raw, missing)
    write_md(Path(args.results + ".md"), text)
    print(text)


if __name__ == "__main__":
    main()
