"""Build the base / fine-tuned pairs that delta pruning is measured on (no such pair ships offline).

The base is the embedded SmolLM2-135M(-Instruct). Each fine-tuned model continues its training on
Brown genre a (press reportage) with the core training loop (:func:`prunekit.core.train.train`,
next-token loss): the first 32 x 512 tokens of genre a are the evaluation protocol's windows and are
never trained on; training reads windows of 256 tokens from the rest of the genre (415 windows),
one window per step, in an order drawn with seed 0. To fit a shared 2-core CPU only the linear
layers of the last ``--blocks`` decoder blocks are trained (full fine-tuning of a subset of layers:
embeddings, norms and the first blocks stay as they are), AdamW, warm-up then cosine to 0,
gradient-norm clip 1. Two pairs differ only by the learning rate:

* ``small``: lr 3e-5, small deltas (the regime where DARE is known to hold);
* ``large``: lr 3e-4, large deltas (the regime where DAREx says DARE's rescaling breaks).

Each is saved once into the user cache (``$PRUNEKIT_CACHE/models/delta/smollm2-135m-brown-a-<name>``,
~540 MB each, never committed) with the settings in its ``prunekit.json``; a later call reuses it.

    python benchmarks/delta_pairs.py --pair small --pair large
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

PAIRS = {"small": {"lr": 3e-5}, "large": {"lr": 3e-4}}
SETTINGS = {"base": "smollm2-135m", "genre": "brown:a", "held_out_tokens": 32 * 512, "seqlen": 256, "steps": 200,
            "batch_size": 1, "blocks": 10, "warmup": 10, "seed": 0}


def pair_dir(name: str) -> Path:
    from prunekit.assets import cache_dir

    return cache_dir() / "models" / "delta" / f"smollm2-135m-brown-a-{name}"


def training_windows(tokenizer, genre: str, held_out: int, seqlen: int) -> torch.Tensor:
    """Non-overlapping windows of the genre's token stream after its first ``held_out`` tokens."""
    from prunekit.core.data_sources import token_stream

    stream = token_stream(genre, tokenizer)[held_out:]
    n = len(stream) // seqlen
    return stream[: n * seqlen].reshape(n, seqlen)


def trainable_linears(model, blocks: int) -> list[str]:
    """Freeze everything, then let the linear layers of the last ``blocks`` decoder blocks train."""
    from prunekit.core.families import adapter_for

    adapter = adapter_for(model)
    for p in model.parameters():
        p.requires_grad_(False)
    names = []
    for i in range(len(adapter.blocks) - blocks, len(adapter.blocks)):
        for name, module in adapter.linears(i).items():
            module.weight.requires_grad_(True)
            names.append(name)
    return names


def build(name: str, threads: int | None = None, log=print) -> Path:
    """The fine-tuned model ``name`` of :data:`PAIRS`, trained and saved once (then reused)."""
    from prunekit.core.train import Callback, TrainConfig, train
    from prunekit.models import load_model, load_tokenizer
    from prunekit.training.recovery import CausalLMLoss

    target = pair_dir(name)
    if (target / "config.json").is_file():
        return target
    if threads:
        torch.set_num_threads(threads)
    settings = {**SETTINGS, **PAIRS[name]}
    tok, model = load_tokenizer(settings["base"]), load_model(settings["base"])
    windows = training_windows(tok, settings["genre"], settings["held_out_tokens"], settings["seqlen"])
    trained = trainable_linears(model, settings["blocks"])
    config = TrainConfig(steps=settings["steps"], batch_size=settings["batch_size"], optimizer="adamw",
                         lr=settings["lr"], weight_decay=0.0, schedule="cosine", warmup=settings["warmup"],
                         max_grad_norm=1.0, seed=settings["seed"])

    class Log(Callback):
        def __init__(self):
            self.t0, self.losses = time.perf_counter(), []

        def after_step(self, state, batch):
            self.losses.append(float(batch.loss))
            if state.step % 10 == 0 or state.step == state.total:
                mean = sum(self.losses[-10:]) / len(self.losses[-10:])
                log(f"{name}: step {state.step}/{state.total} loss {mean:.3f} ({time.perf_counter() - self.t0:.0f} s)")

    logger = Log()
    train(model, (windows, None), config, callbacks=[CausalLMLoss(), logger])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        record = {"prunekit_version": __import__("prunekit").__version__, "source_model": settings["base"],
                  "finetune": {**settings, "windows": len(windows), "trained_layers": len(trained),
                               "first_loss": logger.losses[0], "last_10_loss": sum(logger.losses[-10:]) / 10,
                               "seconds": time.perf_counter() - logger.t0,
                               "made_by": "benchmarks/delta_pairs.py"}}
        (tmp / "prunekit.json").write_text(json.dumps(record, indent=2))
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", action="append", choices=sorted(PAIRS), help="which pair(s) to build (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    for name in args.pair or sorted(PAIRS):
        print(f"{name}: {build(name, args.threads, log=lambda m: print(m, flush=True))}", flush=True)


if __name__ == "__main__":
    main()
