"""What ``--top N`` buys: a small keep corpus (one Brown genre) with and without a reserve of frequent tokens.

For each model, one vocab recipe step per row (``prunekit.vocab.step.apply_vocab_step``, the step
``prunekit vocab`` runs) on a fresh copy of the model:

* the full vocabulary (no pruning);
* the genre alone (``text: brown:f``, popular lore, by default);
* the genre + ``top: N``: the tokenizer's own N most frequent tokens (its first N merges);
* the genre + the N most frequent token ids of a bigger corpus (Brown b-r, which holds the genre),
  written to a keep file (``keep_file``): the same N, ranked by that corpus instead of the tokenizer;
* all of Brown b-r (the keep set of ``benchmarks/vocab.py``'s main tables), for reference.

Every row is measured on the same texts outside the genre, each cut to the same bytes for every row
(``--text-bytes``, whole paragraphs): Brown a (press: prose, not in the genre), WordNet 3.0 glosses
(dictionary prose) and Python source (the standard library's ``.py`` files): tokens per 1,000 bytes
(the inflation: the context a text costs) and bits per byte over the whole text in windows of 512
(the quality: comparable between tokenizations), against the kept vocabulary and parameters (the cost).

    python benchmarks/vocab_top.py --threads 1 [--models smollm2-135m,gemma3-270m] [--tops 4000,16000]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from vocab import chunks, nll_and_bytes, python_source, token_bytes, wordnet_glosses  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NOTES = "## Reading"  # a hand-written section after the tables that rewrites keep


def paragraphs(text: str, limit: int) -> str:
    """The first whole paragraphs of ``text`` that fit in ``limit`` bytes (at least one)."""
    out, size = [], 0
    for para in text.split("\n\n"):
        n = len(para.encode("utf-8")) + 2
        if out and size + n > limit:
            break
        out.append(para)
        size += n
    return "\n\n".join(out)


def texts(limit: int) -> dict[str, str]:
    from prunekit.core.data_sources import source_text

    return {"brown:a": paragraphs(source_text("brown:a"), limit), "wordnet": paragraphs(wordnet_glosses(limit), limit),
            "python": python_source(limit)}


def measure(model, tokenizer, corpus: dict[str, str], say) -> dict:
    """Per text: tokens, tokens per 1,000 bytes, bits per byte of the whole text (windows of 512)."""
    sizes = token_bytes(tokenizer)
    out = {}
    for label, text in corpus.items():
        t0 = time.perf_counter()
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        nll, _tokens, nbytes = nll_and_bytes(model, chunks(ids, 512), sizes)
        text_bytes = len(text.encode("utf-8"))
        out[label] = {"bytes": text_bytes, "tokens": len(ids), "tokens_per_kb": 1000 * len(ids) / text_bytes,
                      "bits_per_byte": nll / math.log(2) / nbytes, "seconds": time.perf_counter() - t0}
        say(f"  {label}: {len(ids):,} tokens, {out[label]['bits_per_byte']:.4f} bpb, {out[label]['seconds']:.0f} s")
    return out


def frequent_ids(tokenizer, source: str, n: int) -> list[int]:
    """The ``n`` token ids ``source`` uses most (ties: the smaller id first)."""
    from prunekit.core.data_sources import token_stream

    counts = Counter(token_stream(source, tokenizer).tolist())
    return [i for i, _c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def run_model(name: str, args, corpus: dict[str, str], tmp: Path, save=lambda row: None) -> dict:
    from prunekit.models import load_model, load_tokenizer
    from prunekit.vocab.step import VocabStep, apply_vocab_step

    say = lambda m: print(f"{name}: {m}", flush=True)  # noqa: E731
    tok, base = load_tokenizer(name), load_model(name)
    row = {"model": name, "vocab": len(tok), "params": sum(p.numel() for p in base.parameters()), "variants": []}
    steps = [("full vocabulary", None), (f"{args.genre} only", VocabStep(text=args.genre))]
    steps += [(f"{args.genre} + top {n:,} (tokenizer)", VocabStep(text=args.genre, top=n)) for n in args.tops]
    for n in args.tops:
        keep_file = tmp / f"{name}-{args.big.replace(':', '_')}-top{n}.txt"
        ids = frequent_ids(tok, args.big, n)
        keep_file.write_text(f"# the {n} most frequent token ids of {args.big} ({name} tokenizer)\n"
                             + "\n".join(map(str, ids)) + "\n")
        steps.append((f"{args.genre} + top {n:,} of {args.big} (keep file)",
                      VocabStep(text=args.genre, keep_file=str(keep_file))))
    steps.append((f"{args.big} (all)", VocabStep(text=args.big)))
    for label, step in steps:
        say(label)
        model = copy.deepcopy(base)
        entry = {"label": label, "step": step.to_dict() if step else None}
        if step is None:
            tokenizer = tok
            entry.update(vocab=len(tok), params=row["params"], counts={})
        else:
            t0 = time.perf_counter()
            tokenizer, result = apply_vocab_step(model, tok, step)
            entry.update(vocab=result.vocab_after, params=result.parameters_after, counts=result.counts,
                         prune_s=time.perf_counter() - t0)
            if entry["step"].get("keep_file"):
                entry["step"]["keep_file"] = Path(entry["step"]["keep_file"]).name  # a temporary file
        entry["texts"] = measure(model, tokenizer, corpus, say)
        row["variants"].append(entry)
        row["load_average"] = os.getloadavg()
        save(row)  # after each row: a run stopped later keeps the rows measured so far
        del model
    row["load_average"] = os.getloadavg()  # the machine is shared: its 1/5/15-minute load after this model
    row["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    row["options"] = options(args)
    return row


def options(args) -> dict:
    return {"genre": args.genre, "big": args.big, "tops": args.tops, "text_bytes": args.text_bytes,
            "threads": args.threads}


def write_markdown(rows: list[dict], args, path: Path) -> None:
    labels = list(rows[0]["variants"][0]["texts"]) if rows else []
    lines = [f"# `--top N`: a small keep corpus ({args.genre}) with a reserve of frequent tokens", "",
             f"Command: `python benchmarks/vocab_top.py --threads {args.threads} --models "
             f"{','.join(r['model'] for r in rows)} "
             f"--genre {args.genre} --big {args.big} --tops {','.join(map(str, args.tops))} "
             f"--text-bytes {args.text_bytes}`. fp32, CPU, {args.threads} torch thread(s) on a shared machine.", "",
             "Each row is one vocab recipe step (`apply_vocab_step`, what `prunekit vocab` runs) on a fresh copy of "
             f"the model. `top N (tokenizer)` = `--top N`: the tokenizer's own first N merges. `top N of {args.big} "
             f"(keep file)` = `--keep-file` listing the N ids {args.big} uses most. Texts outside the genre, the "
             "same bytes for every row: " + ", ".join(
                 f"{k} {v['bytes']:,} bytes" for k, v in rows[0]["variants"][0]["texts"].items()) + " (whole text, "
             "windows of 512). Tokens / KB: the context a text costs; bits per byte (bpb): quality, comparable "
             "across tokenizations.", ""]
    for r in rows:
        full = r["variants"][0]
        lines += [f"## {r['model']} ({r['vocab']:,} tokens, {r['params'] / 1e6:.1f}M parameters)", "",
                  "| keep set | vocabulary | top / keep-file ids the genre does not use | parameters | "
                  + " | ".join(f"{t} tokens/KB | {t} bpb" for t in labels) + " |",
                  "|---|---:|---:|---:|" + "---:|---:|" * len(labels)]
        for v in r["variants"]:
            c, step = v["counts"], v["step"] or {}
            added = c.get("top_new", 0) + c.get("listed_new", 0) if step.get("top") or step.get("keep_file") else ""
            cells = []
            for t in labels:
                x, f = v["texts"][t], full["texts"][t]
                if v is full:
                    cells.append(f"{x['tokens_per_kb']:.1f} | {x['bits_per_byte']:.4f}")
                else:
                    cells.append(f"{x['tokens_per_kb']:.1f} ({x['tokens'] / f['tokens'] - 1:+.1%}) | "
                                 f"{x['bits_per_byte']:.4f} ({x['bits_per_byte'] / f['bits_per_byte'] - 1:+.1%})")
            lines.append(f"| {v['label']} | {v['vocab']:,} | {f'{added:,}' if added != '' else ''} | "
                         f"{v['params'] / 1e6:.1f}M | " + " | ".join(cells) + " |")
        lines += ["", "Percentages: against the full vocabulary on the same text. The vocabulary grows by less than "
                  "the ids the genre does not use where some were already kept by the genre's merge closure. Where "
                  "the kept ids come from: "
                  + "; ".join(f"{v['label']}: " + ", ".join(f"{k} {n:,}" for k, n in v["counts"].items())
                              for v in r["variants"][1:]) + ".", ""]
    loads = [f"{r['model']} {' / '.join(f'{x:.1f}' for x in r['load_average'])} "
             + (f"(finished {r['finished']})" if r.get("finished") else "(run stopped: the rows measured so far)")
             for r in rows]
    lines += ["Load average (1/5/15 min) of the shared machine after each model: " + "; ".join(loads) + "."]
    notes = path.read_text().partition(NOTES)[1:] if path.exists() else ("", "")  # hand-written, kept
    path.write_text("\n".join(lines) + "\n" + ("\n" + "".join(notes) if notes[0] else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m", help="comma list")
    ap.add_argument("--genre", default="brown:f", help="the small keep corpus")
    ap.add_argument("--big", default="brown:b-r", help="the bigger corpus whose most frequent ids fill the keep file")
    ap.add_argument("--tops", default="4000,16000", help="comma list of N")
    ap.add_argument("--text-bytes", type=int, default=20_000, help="bytes of each measured text")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "vocab_top.md"))
    ap.add_argument("--append", action="store_true", help="keep the other models' rows of the results file (one "
                    "model per run; the runs must share the other options)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.models = args.models.split(",")
    args.tops = [int(n) for n in args.tops.split(",")]
    corpus = texts(args.text_bytes)
    rows, out = [], Path(args.out)
    if args.append and out.with_suffix(".json").exists():
        rows = [r for r in json.loads(out.with_suffix(".json").read_text()) if r["model"] not in args.models]
        differ = [r["model"] for r in rows if r.get("options", options(args)) != options(args)]
        if differ:
            raise SystemExit(f"--append: the rows of {', '.join(differ)} were measured with other options")
    with tempfile.TemporaryDirectory(prefix="vocab-top-") as tmp:
        for name in args.models:
            def save(row, done=rows):
                partial = [*done, {**row, "finished": None}]
                out.with_suffix(".json").write_text(json.dumps(partial, indent=2))
                write_markdown(partial, args, out)

            rows.append(run_model(name, args, corpus, Path(tmp), save))
            out.with_suffix(".json").write_text(json.dumps(rows, indent=2))  # after each model
            write_markdown(rows, args, out)
    print(out.read_text())


if __name__ == "__main__":
    main()
