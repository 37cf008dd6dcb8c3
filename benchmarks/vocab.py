"""Vocabulary pruning on real models: keep the vocabulary of Brown b-r (everything but press reportage).

For each model (SmolLM2-135M; Gemma 3 270M when ``prunekit.assets`` knows ``gemma3-270m``):

* sizes: vocabulary, parameters, ``model.safetensors`` on disk (fp32), before and after;
* lossless in domain: the whole of Brown b-r (1.2M tokens for SmolLM2) tokenizes to the same ids up
  to the id map, and the logits of the kept tokens on 2 windows of it are the same numbers;
* Brown press (genre a, not in the keep corpus): perplexity on the usual protocol (first 32 windows x
  512 tokens) and bits per byte of the same windows (comparable when the tokenizations differ); Brown
  humor (genre r, in the keep corpus: the same tokens) on its first 16 windows;
* out of domain: WordNet 3.0 glosses (Debian ``wordnet-base``) and Python source (the standard
  library's own ``.py`` files): tokens per 1,000 bytes and bits per byte, before and after;
* with Wanda 50% (calibration Brown b-r, ``--nsamples`` x 512) on the rest of the model, dense
  vocabulary vs pruned vocabulary;
* the forward time of one 1 x 512 window (the output head shrinks with the vocabulary).

    python benchmarks/vocab.py --threads 1 [--models smollm2-135m,gemma3-270m] [--append]

Each row records its protocol (windows, calibration, text sizes, threads); ``--append`` keeps the rows
of the results file's other models (one model per run, each its own job), and the header then gives
each row's protocol.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
OOD_BYTES = 40_000  # of each out-of-domain text
NOTES = "## Reading"  # a hand-written section after the tables that rewrites keep


def wordnet_glosses(limit: int = OOD_BYTES) -> str:
    """Glosses of the first WordNet noun synsets (definition and examples), one paragraph each."""
    out, size = [], 0
    for line in Path("/usr/share/wordnet/data.noun").read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(" ") or " | " not in line:
            continue  # the licence header
        gloss = line.split(" | ", 1)[1].strip()
        out.append(gloss)
        size += len(gloss) + 2
        if size >= limit:
            break
    return "\n\n".join(out)


def python_source(limit: int = OOD_BYTES) -> str:
    """The first files of Python's standard library, in name order."""
    out, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        out.append(text)
        size += len(text)
        if size >= limit:
            break
    return "\n\n".join(out)[:limit]


def token_bytes(tokenizer) -> torch.Tensor:
    """Bytes of text each token id stands for (byte-level symbols, ``<0xNN>`` byte tokens, ``▁`` spaces)."""
    from prunekit.vocab.prune import tokenizer_spec

    spec = tokenizer_spec(tokenizer)
    sizes = []
    for token in spec.tokens:
        if spec.byte_level:
            sizes.append(len(token))
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", token):
            sizes.append(1)
        else:
            sizes.append(len(token.replace("▁", " ").encode("utf-8")))
    for i in spec.special_ids:
        sizes[i] = 0
    return torch.tensor(sizes, dtype=torch.float64)


@torch.no_grad()
def nll_and_bytes(model, windows: torch.Tensor, sizes: torch.Tensor) -> tuple[float, int, float]:
    """(sum of next-token NLL, predicted tokens, bytes of the predicted tokens) over ``windows``."""
    total, tokens, nbytes = 0.0, 0, 0.0
    for row in windows:
        ids = row[None]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum"))
        tokens += ids.shape[1] - 1
        nbytes += float(sizes[ids[0, 1:]].sum())
    return total, tokens, nbytes


def chunks(stream: torch.Tensor, seqlen: int, limit: int | None = None) -> list[torch.Tensor]:
    rows = [stream[i : i + seqlen] for i in range(0, len(stream), seqlen)]
    rows = [r for r in rows if len(r) >= 2]
    return rows[:limit] if limit else rows


def evaluate(model, tokenizer, texts: dict, nwindows: int) -> dict:
    """Per text: tokens, tokens per 1,000 bytes, perplexity (per token) and bits per byte."""
    from prunekit.core.data_sources import token_stream

    sizes = token_bytes(tokenizer)
    out = {}
    for label, source in texts.items():
        stream = token_stream(source, tokenizer)
        windows = chunks(stream, 512, {"brown:a": nwindows, "brown:r": nwindows // 2}.get(label))
        nll, tokens, nbytes = nll_and_bytes(model, windows, sizes)
        text_bytes = float(sizes[stream].sum())
        out[label] = {"tokens": len(stream), "tokens_per_kb": 1000 * len(stream) / max(text_bytes, 1),
                      "perplexity": math.exp(nll / tokens), "bits_per_byte": nll / math.log(2) / nbytes}
    return out


def forward_seconds(model, length: int = 512, runs: int = 3) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        for _ in range(runs):
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            times.append(time.perf_counter() - t0)
    return min(times)


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def run_model(name: str, args) -> dict:
    import prunekit
    from prunekit.core.data_sources import token_stream
    from prunekit.core.io import save_pretrained
    from prunekit.models import load_model, load_tokenizer, resolve_model_path
    from prunekit.vocab.prune import keep_set, map_ids, prune_vocab

    say = lambda m: print(f"{name}: {m}", flush=True)  # noqa: E731
    tok, model = load_tokenizer(name), load_model(name)
    texts = {"brown:r": "brown:r", "brown:a": "brown:a", "wordnet": [wordnet_glosses(args.ood_bytes)],
             "python": [python_source(args.ood_bytes)]}
    row = {"model": name, "vocab_before": len(tok), "params_before": sum(p.numel() for p in model.parameters()),
           "disk_before": disk_bytes(Path(resolve_model_path(name))), "forward_s_before": forward_seconds(model)}
    in_domain = token_stream(args.keep_text, tok)
    probe = chunks(in_domain, 256, 2)
    with torch.no_grad():
        logits_before = [model(input_ids=w[None]).logits[0] for w in probe]
    row["dense"] = evaluate(model, tok, texts, args.nwindows)
    say(f"dense {json.dumps(row['dense'])}")

    t0 = time.perf_counter()
    keep = keep_set(tok, args.keep_text, args.top)
    new_tok, result = prune_vocab(model, tok, keep)
    row["prune_s"] = time.perf_counter() - t0
    row.update(vocab_after=result.vocab_after, params_after=result.parameters_after, counts=result.counts,
               tied=result.tied, forward_s_after=forward_seconds(model))
    pruned_stream = token_stream(args.keep_text, new_tok)
    row["in_domain_tokens"] = len(in_domain)
    row["in_domain_identical"] = bool(torch.equal(pruned_stream, map_ids(in_domain, keep.ids)))
    with torch.no_grad():
        diffs = [(model(input_ids=map_ids(w, keep.ids)[None]).logits[0] - before[:, keep.ids]).abs().max().item()
                 for w, before in zip(probe, logits_before)]
    row["kept_logits_max_abs_diff"] = max(diffs)
    with tempfile.TemporaryDirectory(prefix="vocab-bench-") as tmp:
        out = save_pretrained(model, Path(tmp) / "pruned", new_tok, manifest={"benchmark": True})
        row["disk_after"] = disk_bytes(out)
    row["pruned"] = evaluate(model, new_tok, texts, args.nwindows)
    say(f"pruned {json.dumps({k: v for k, v in row.items() if k not in ('dense',)})}")

    if args.wanda:
        for label, (m, t) in {"pruned": (model, new_tok), "dense": (load_model(name), tok)}.items():
            recipe = prunekit.Recipe([prunekit.PruneStep(method="wanda", sparsity=0.5)],
                                     prunekit.CalibrationConfig(source=args.keep_text, nsamples=args.nsamples))
            prunekit.prune(m, recipe, tokenizer=t, progress=False)
            row[f"wanda_{label}"] = evaluate(m, t, {"brown:a": "brown:a"}, args.nwindows)["brown:a"]
            say(f"wanda 50% + {label} vocabulary {json.dumps(row[f'wanda_{label}'])}")
            del m
    row["load_average"] = os.getloadavg()  # the machine is shared: its 1/5/15-minute load after this model
    row["protocol"] = protocol(args)
    row["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return row


def protocol(args) -> dict:
    return {"nwindows": args.nwindows, "nsamples": args.nsamples if args.wanda else None, "ood_bytes": args.ood_bytes,
            "threads": args.threads, "keep_text": args.keep_text, "top": args.top}


def describe(p: dict) -> str:
    wanda = f"Wanda calibration {p['nsamples']} x 512 of {p['keep_text']}" if p.get("nsamples") else "no Wanda rows"
    return (f"keep text {p['keep_text']}, top {p['top']}; evaluation windows {p['nwindows']} x 512 (Brown r: "
            f"{p['nwindows'] // 2}); out-of-domain texts {p['ood_bytes']:,} bytes each; {wanda}; {p['threads']} "
            "torch thread(s)")


def write_markdown(rows: list[dict], args, path: Path) -> None:
    order = ("smollm2-135m", "gemma3-270m")
    rows = sorted(rows, key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    protocols = {r["model"]: r.get("protocol") or protocol(args) for r in rows}
    if len({json.dumps(p, sort_keys=True) for p in protocols.values()}) == 1:
        runs = [f"Command: `python benchmarks/vocab.py --threads {args.threads} --models "
                f"{','.join(protocols)} --nwindows {args.nwindows} --nsamples {args.nsamples} --ood-bytes "
                f"{args.ood_bytes}` ({describe(next(iter(protocols.values())))})."]
    else:
        runs = ["One run per model (`python benchmarks/vocab.py --models MODEL --append ...`), each with its "
                "protocol:", ""] + [f"- {m}: {describe(p)}" + (f"; finished {r['finished']}" if r.get("finished")
                                                               else "") for (m, p), r in zip(protocols.items(), rows)]
    lines = ["# Vocabulary pruning: keep the vocabulary of Brown b-r", "", *runs, "",
             "fp32, CPU, on a shared machine (times are indicative).", "",
             "Keep set = token ids Brown b-r uses + special tokens + the alphabet (byte-level symbols or byte-fallback "
             "tokens) + the tokens BPE makes on the way to a kept token (merge closure). New id j = old id "
             "`kept_ids[j]` (in `prunekit.json`).", "",
             "## Size and losslessness", "",
             "| model | vocabulary | parameters | model.safetensors | b-r tokens | same ids on b-r | max kept-logit "
             "diff | 1x512 forward |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['vocab_before']:,} -> {r['vocab_after']:,} | {r['params_before'] / 1e6:.1f}M -> "
            f"{r['params_after'] / 1e6:.1f}M ({1 - r['params_after'] / r['params_before']:.1%} fewer) | "
            f"{r['disk_before'] / 2**20:.0f} -> {r['disk_after'] / 2**20:.0f} MiB | {r['in_domain_tokens']:,} | "
            f"{'yes' if r['in_domain_identical'] else 'NO'} | {r['kept_logits_max_abs_diff']:.1e} | "
            f"{r['forward_s_before']:.2f} -> {r['forward_s_after']:.2f} s |")
    lines += ["", "Where the kept ids come from: " + "; ".join(
        f"{r['model']}: " + ", ".join(f"{k} {v:,}" for k, v in r["counts"].items()) for r in rows), "",
        "## Perplexity and the out-of-domain penalty", "",
        "Perplexity is per token of each model's own tokenization; bits per byte (bpb) compares the two on the same "
        "text when the tokenizations differ. Brown r (humor) is in the keep corpus: same tokens, so the perplexity "
        "can only fall. Brown a (press) is not, so a few of its words split into smaller pieces.", "",
        "| model | text | tokens (dense -> pruned) | tokens / KB | perplexity | bits per byte |",
        "|---|---|---|---|---|---|"]
    for r in rows:
        for label in r["dense"]:
            d, p = r["dense"][label], r["pruned"][label]
            lines.append(f"| {r['model']} | {label} | {d['tokens']:,} -> {p['tokens']:,} | "
                         f"{d['tokens_per_kb']:.1f} -> {p['tokens_per_kb']:.1f} | {d['perplexity']:.2f} -> "
                         f"{p['perplexity']:.2f} | {d['bits_per_byte']:.4f} -> {p['bits_per_byte']:.4f} |")
    if any("wanda_dense" in r for r in rows):
        lines += ["", "## With Wanda 50% on the rest of the model", "",
                  "| model | vocabulary | Brown a perplexity | bits per byte |", "|---|---|---|---|"]
        for r in rows:
            for label in ("dense", "pruned"):
                w = r.get(f"wanda_{label}")
                if w:
                    lines.append(f"| {r['model']} + Wanda 50% | {label} | {w['perplexity']:.2f} | "
                                 f"{w['bits_per_byte']:.4f} |")
    loads = [f"{r['model']} {' / '.join(f'{x:.1f}' for x in r['load_average'])}" for r in rows if "load_average" in r]
    if loads:
        lines += ["", "Load average (1/5/15 min) of the shared machine after each model: " + "; ".join(loads) + "."]
    notes = path.read_text().partition(NOTES)[1:] if path.exists() else ("", "")  # hand-written, kept
    path.write_text("\n".join(lines) + "\n" + ("\n" + "".join(notes) if notes[0] else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="comma list (default: smollm2-135m, and gemma3-270m if embedded)")
    ap.add_argument("--keep-text", default="brown:b-r")
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--nwindows", type=int, default=32)
    ap.add_argument("--nsamples", type=int, default=32, help="Wanda calibration windows")
    ap.add_argument("--no-wanda", dest="wanda", action="store_false")
    ap.add_argument("--ood-bytes", type=int, default=OOD_BYTES, help="bytes of each out-of-domain text")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "vocab.md"))
    ap.add_argument("--append", action="store_true", help="keep the other models' rows of the results file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from prunekit.assets import EMBEDDED_MODELS

    args.models = args.models.split(",") if args.models else [
        m for m in ("smollm2-135m", "gemma3-270m") if m in EMBEDDED_MODELS]
    rows, out = [], Path(args.out)
    if args.append and out.with_suffix(".json").exists():
        rows = [r for r in json.loads(out.with_suffix(".json").read_text()) if r["model"] not in args.models]
    for name in args.models:
        rows.append(run_model(name, args))
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2))  # after each model: a later failure
        write_markdown(rows, args, out)  # keeps the models measured so far
    print(out.read_text())


if __name__ == "__main__":
    main()
