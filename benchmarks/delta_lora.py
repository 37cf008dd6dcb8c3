"""LoRA deltas on a real SmolLM2-135M adapter: pruning the merged product B @ A against its factors.

The adapter (no LoRA adapter of SmolLM2 ships offline) is trained once by :func:`build` and cached in
PEFT's format (``$PRUNEKIT_CACHE/models/delta/smollm2-135m-brown-a-lora-r16``): rank 16, alpha 32, on
the q, k, v, o, gate, up and down projections of all 30 blocks, with the core training loop
(:func:`prunekit.core.train.train` + :class:`prunekit.training.recovery.CausalLMLoss`) and the
in-house LoRA layer (:class:`prunekit.training.recovery.MaskedLoRA` with nothing masked: the layer
computes with W + (alpha/r) B A, A Kaiming-uniform, B zero, W frozen). Same data protocol as
``benchmarks/delta_pairs.py``: Brown genre a minus its first 32 x 512 tokens (held out), windows of
256 tokens, one window per step in an order drawn with seed 0; AdamW, warm-up then cosine to 0,
gradient-norm clip 1.

Evaluation: perplexity on the first ``--nwindows`` x 512 tokens of Brown genre a (never trained on)
of the base, the base with the adapter merged, and for p in 0.5, 0.9, 0.99 the adapter pruned
``merged`` (the delta s B A of every adapted layer, through ``prune_delta``) or as ``factors`` (the
entries of A and B): DARE with each of ``--seeds``, magnitude, DAREx-q (per-layer factor, merged
only: it reads the layers' calibration inputs). Sizes: the adapter file, the kept entries as a
sparse file (int32 index + fp32 value), the full checkpoint.

    python benchmarks/delta_lora.py --threads 1            # builds the adapter first if missing
    python benchmarks/delta_lora.py --build-only --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
RESULTS = Path(__file__).parent / "results"
RATES = (0.5, 0.9, 0.99)
NOTES = "## Reading"  # a hand-written section after the tables that a rewrite keeps
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = {"r": 16, "lora_alpha": 32, "target_modules": PROJECTIONS, "lr": 1e-3, "steps": 100, "batch_size": 1,
        "warmup": 10, "seed": 0}


def adapter_dir() -> Path:
    from prunekit.assets import cache_dir

    return cache_dir() / "models" / "delta" / f"smollm2-135m-brown-a-lora-r{LORA['r']}"


def build(threads: int | None = None, log=print) -> Path:
    """The LoRA adapter, trained and saved once in PEFT's format (then reused)."""
    from delta_pairs import SETTINGS, training_windows

    from prunekit.core.families import adapter_for
    from prunekit.core.train import Callback, TrainConfig, train
    from prunekit.delta.lora import LoraAdapter, write_adapter_files
    from prunekit.models import load_model, load_tokenizer
    from prunekit.training.recovery import CausalLMLoss, MaskedLoRA, add_masked_lora

    target = adapter_dir()
    if (target / "adapter_config.json").is_file():
        return target
    if threads:
        torch.set_num_threads(threads)
    tok, model = load_tokenizer(SETTINGS["base"]), load_model(SETTINGS["base"])
    windows = training_windows(tok, SETTINGS["genre"], SETTINGS["held_out_tokens"], SETTINGS["seqlen"])
    blocks = adapter_for(model)
    names = [name for i in range(len(blocks.blocks)) for name in blocks.linears(i)
             if name.rsplit(".", 1)[-1] in LORA["target_modules"]]
    model.requires_grad_(False)
    torch.manual_seed(LORA["seed"])  # the Kaiming init of every A
    add_masked_lora(model, {n: torch.zeros(model.get_submodule(n).weight.shape, dtype=torch.bool) for n in names},
                    rank=LORA["r"], alpha=LORA["lora_alpha"])
    config = TrainConfig(steps=LORA["steps"], batch_size=LORA["batch_size"], optimizer="adamw", lr=LORA["lr"],
                         weight_decay=0.0, schedule="cosine", warmup=LORA["warmup"], max_grad_norm=1.0,
                         seed=LORA["seed"])

    class Log(Callback):
        def __init__(self):
            self.t0, self.losses = time.perf_counter(), []

        def after_step(self, state, batch):
            self.losses.append(float(batch.loss.detach()))
            if state.step % 10 == 0 or state.step == state.total:
                mean = sum(self.losses[-10:]) / len(self.losses[-10:])
                log(f"lora: step {state.step}/{state.total} loss {mean:.3f} ({time.perf_counter() - self.t0:.0f} s)")

    logger = Log()
    model.train()
    train(model, (windows, None), config, callbacks=[CausalLMLoss(), logger])
    factors = {}
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, MaskedLoRA)
        factors[name] = (layer.lora_a.detach().clone(), layer.lora_b.detach().clone())
    adapter_config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": SETTINGS["base"],
                      "r": LORA["r"], "lora_alpha": LORA["lora_alpha"], "target_modules": LORA["target_modules"],
                      "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
                      "inference_mode": True}
    adapter = LoraAdapter(adapter_config, factors)
    from prunekit.core.io import cache_entry

    with cache_entry(target) as tmp:
        write_adapter_files(tmp, adapter)
        record = {"prunekit_version": __import__("prunekit").__version__, "source_model": SETTINGS["base"],
                  "finetune": {**{k: SETTINGS[k] for k in ("base", "genre", "held_out_tokens", "seqlen")}, **LORA,
                               "windows": len(windows), "modules": len(names), "parameters": adapter.parameters(),
                               "first_loss": logger.losses[0], "last_10_loss": sum(logger.losses[-10:]) / 10,
                               "seconds": time.perf_counter() - logger.t0, "threads": torch.get_num_threads(),
                               "made_by": "benchmarks/delta_lora.py"}}
        (tmp / "prunekit.json").write_text(json.dumps(record, indent=2))
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rates", default=",".join(map(str, RATES)), help="drop rates to measure (rows of other rates "
                    "from an earlier run with the same protocol stay in the report)")
    ap.add_argument("--nwindows", type=int, default=8)
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build-only", action="store_true", help="train and cache the adapter, measure nothing")
    ap.add_argument("--out", default=str(RESULTS / "delta_lora.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = build(args.threads, log=lambda m: print(m, flush=True))
    print(f"adapter: {folder}", flush=True)
    if args.build_only:
        return
    measure(args, folder)


def runs(seeds: list[int]) -> list[tuple[str, str, str, dict, list[int]]]:
    """(label, lora_prune, method, options, seeds) of every configuration measured at each drop rate."""
    return [("DARE", "merged", "dare", {}, seeds), ("DARE", "factors", "dare", {}, seeds),
            ("magnitude", "merged", "magnitude", {}, [0]), ("magnitude", "factors", "magnitude", {}, [0]),
            ("DAREx-q (layer)", "merged", "darex-q", {"scope": "layer"}, seeds[:1]),
            ("Wanda-style", "merged", "wanda", {}, [0])]


def lora_stats(base, adapter) -> dict:
    """Size of the merged delta s*B@A over the adapted layers: relative norm, mean and max |D|, entries."""
    num = den = total = mean_abs = largest = 0.0
    for name in adapter.factors:
        d = adapter.delta(name)
        w = base.get_submodule(name).weight.detach().float()
        num += float(d.pow(2).sum())
        den += float(w.pow(2).sum())
        total += d.numel()
        mean_abs += float(d.abs().sum())
        largest = max(largest, float(d.abs().max()))
    return {"relative_norm": (num / den) ** 0.5, "mean_abs": mean_abs / total, "max_abs": largest,
            "entries": int(total), "factor_entries": adapter.parameters(), "modules": len(adapter.factors)}


def measure(args, folder: Path) -> None:
    from delta_pairs import SETTINGS, training_windows

    from prunekit.core.data_sources import calibration_windows
    from prunekit.core.recipe import CalibrationConfig
    from prunekit.delta.lora import merged_model, prune_factors, read_adapter
    from prunekit.delta.prune import prune_delta
    from prunekit.delta.step import DeltaStep
    from prunekit.evaluate.perplexity import perplexity
    from prunekit.models import load_model, load_tokenizer

    seeds = [int(s) for s in args.seeds.split(",")]
    tok, base = load_tokenizer(SETTINGS["base"]), load_model(SETTINGS["base"])
    stream = training_windows(tok, SETTINGS["genre"], SETTINGS["held_out_tokens"], 1).reshape(-1)
    calib = CalibrationConfig(source=calibration_windows(stream, None, args.nsamples, 256, 0), nsamples=args.nsamples,
                              seqlen=256, chunk_size=4)

    def ppl(model) -> float:
        return perplexity(model, tok, "brown:a", nwindows=args.nwindows, seqlen=512).perplexity

    adapter = read_adapter(folder)
    finetuned = merged_model(base, adapter)
    reference = {k: v.clone() for k, v in finetuned.state_dict().items()}
    rates = [float(r) for r in args.rates.split(",")]
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("build_only", "rates")},
              "finetune": json.loads((folder / "prunekit.json").read_text())["finetune"],
              "adapter_bytes": (folder / "adapter_model.safetensors").stat().st_size,
              "checkpoint_bytes": sum(p.numel() * p.element_size() for p in base.parameters()),
              "delta": lora_stats(base, adapter), "load_average_start": os.getloadavg(), "rows": []}
    out = Path(args.out)
    saved = out.with_suffix(".json")
    previous = json.loads(saved.read_text()) if saved.is_file() else {}
    if previous and all(previous.get(k) == report[k] for k in ("settings", "finetune", "adapter_bytes")):
        # same adapter and protocol: keep the earlier run's base figures and its rows of other rates
        report.update({k: previous[k] for k in ("base", "lora_merged", "load_average_start")},
                      rows=[r for r in previous["rows"] if r["p"] not in rates])
    else:
        report["base"] = ppl(base)
        report["lora_merged"] = ppl(finetuned)
    print(f"base {report['base']:.3f}, LoRA merged {report['lora_merged']:.3f}; delta {report['delta']}", flush=True)
    for p in rates:
        for label, mode, method, options, method_seeds in runs(seeds):
            values, seconds, kept = [], [], 0
            for seed in method_seeds:
                step = DeltaStep(method=method, sparsity=p, options=options, seed=seed, lora_prune=mode)
                t0 = time.perf_counter()
                if mode == "factors":
                    pruned, result = prune_factors(adapter, step, base)
                    model = merged_model(base, pruned)
                else:
                    finetuned.load_state_dict(reference)
                    result = prune_delta(base, finetuned, step, calib)
                    model = finetuned
                seconds.append(time.perf_counter() - t0)
                values.append(ppl(model))
                kept = result.delta_after
            row = {"p": p, "method": label, "prune": mode, "perplexity": values, "seeds": method_seeds, "kept": kept,
                   "seconds": seconds}
            report["rows"].append(row)
            report["rows"].sort(key=lambda r: r["p"])  # stable: the order of runs() within a rate
            print(f"p={p} {label} {mode}: {values} kept {kept:,}", flush=True)
            report["load_average_end"] = os.getloadavg()
            out.with_suffix(".json").write_text(json.dumps(report, indent=2))
        write_markdown(report, out)
    print(out.read_text())


def _num(x: float) -> str:
    return f"{x:.2f}" if x < 1e4 else f"{x:.2g}"


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return _num(values[0])
    return f"{_num(statistics.mean(values))} ({_num(min(values))}-{_num(max(values))})"


def _gain(base: float, lora: float, value: float) -> str:
    return f"{(base - value) / (base - lora):.0%}" if value <= base else "none (worse than base)"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def write_markdown(report: dict, path: Path) -> None:
    s, ft, d = report["settings"], report["finetune"], report["delta"]
    base, lora = report["base"], report["lora_merged"]
    lines = ["# LoRA deltas: pruning the merged product s*B@A against pruning the factors A and B", "",
             f"Command: `python benchmarks/delta_lora.py --threads {s['threads']} --seeds {s['seeds']} --nwindows "
             f"{s['nwindows']} --nsamples {s['nsamples']}`. {s['threads']} torch thread(s) on a 2-core CPU machine "
             "shared with other jobs; load average (1/5/15 min) at the start "
             f"{' / '.join(f'{x:.1f}' for x in report['load_average_start'])}, at the end "
             f"{' / '.join(f'{x:.1f}' for x in report.get('load_average_end', report['load_average_start']))}.", "",
             f"Adapter: LoRA r {ft['r']}, alpha {ft['lora_alpha']} (scale {ft['lora_alpha'] / ft['r']:g}) on "
             f"{', '.join(ft['target_modules'])} of all {d['modules'] // len(ft['target_modules'])} blocks of "
             f"SmolLM2-135M ({d['modules']} modules, {d['factor_entries']:,} factor entries), trained by "
             f"`benchmarks/delta_lora.py` with the core loop: {ft['steps']} steps of one {ft['seqlen']}-token window "
             f"of Brown genre a (minus its first {ft['held_out_tokens']:,} tokens), AdamW lr {ft['lr']:g}, warm-up "
             f"{ft['warmup']} then cosine, clip 1 ({ft['seconds']:.0f} s at {ft.get('threads', 1)} thread(s); "
             f"loss {ft['first_loss']:.2f} at the first step, {ft['last_10_loss']:.2f} over the last 10). Merged "
             f"delta over the adapted layers: ||D|| / ||W_base|| = {d['relative_norm']:.4f}, mean |D| = "
             f"{d['mean_abs']:.2e}, max |D| = {d['max_abs']:.2e}, {d['entries']:,} entries.", "",
             f"Perplexity on the first {s['nwindows']} x 512 tokens of Brown genre a (never trained on). "
             f"Base **{base:.2f}**, base + LoRA (merged) **{lora:.2f}**. Random methods: mean (min-max) over the "
             "seeds listed. `merged`: the method prunes the dense (out x in) delta s*B@A of every adapted layer "
             "(`prune_delta`, p = the fraction of its entries set to zero); `factors`: it prunes the entries of A "
             "and of B, each at p (p = the fraction of the adapter's own entries set to zero; DARE rescales each "
             "factor by 1/(1-p)). Calibration of DAREx-q and Wanda-style: "
             f"{s['nsamples']} x 256 tokens from the training part of genre a. \"gain kept\" = (base - pruned) / "
             "(base - LoRA merged).", "",
             "| p | method | pruned | perplexity | gain kept | kept entries | as a sparse file (int32 index + fp32 "
             "value) |", "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        mean = statistics.mean(row["perplexity"])
        seeds = "" if len(row["seeds"]) > 1 else f" (seed {row['seeds'][0]})" if row["method"].startswith(
            ("DARE", "DAREx")) else ""
        lines.append(f"| {row['p']} | {row['method']}{seeds} | {row['prune']} | {_cell(row['perplexity'])} | "
                     f"{_gain(base, lora, mean)} | {row['kept']:,} | {_mib(row['kept'] * 8)} |")
    lines += ["", f"Sizes: the adapter file (fp32 safetensors, {d['factor_entries']:,} entries) "
              f"{_mib(report['adapter_bytes'])}; the full fine-tuned checkpoint (fp32) "
              f"{_mib(report['checkpoint_bytes'])}. A factor-pruned adapter written in PEFT's format keeps its "
              "dense shapes (the pruned entries are stored as zeros: same file size); the last column is what its "
              "kept entries take as indices + values.", ""]
    notes = path.read_text().partition(NOTES)[1:] if path.exists() else ("", "")  # hand-written, kept
    path.write_text("\n".join(lines) + ("\n" + "".join(notes) if notes[0] else ""))


if __name__ == "__main__":
    main()
