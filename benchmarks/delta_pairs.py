"""Build the base / fine-tuned pairs that delta pruning is measured on (no such pair ships offline).

The base is the embedded SmolLM2-135M(-Instruct). Each fine-tuned model continues its training on
Brown genre a (press reportage) with the core training loop (:func:`prunekit.core.train.train`,
next-token loss): the first 32 x 512 tokens of genre a are the evaluation protocol's windows and are
never trained on; training reads windows of 256 tokens from the rest of the genre (415 windows),
one window per step, in an order drawn with seed 0. To fit a shared 2-core CPU only the linear
layers of the last ``--blocks`` decoder blocks are trained (full fine-tuning of a subset of layers:
embeddings, norms and the first blocks stay as they are), AdamW, warm-up then cosine to 0,
gradient-norm clip 1. Four pairs differ only by the learning rate and a penalty:

* ``small``: lr 3e-5, small deltas (the regime where DARE is known to hold);
* ``large``: lr 3e-4, large deltas (the regime where DAREx says DARE's rescaling breaks);
* ``l2`` and ``l2-weak``: ``large`` with the L2 penalty ``lambda * ||W - W_base||^2`` on the trained
  weights added to the loss (:class:`prunekit.core.train.DeltaL2`): DAREx-L2 (Deng et al. 2025),
  regularised deltas so that DARE holds at large drop rates. ``l2``: lambda = 0.5, picked before any
  training: the strength at which the penalty's gradient 2 lambda D equals the loss gradient's size
  when the delta reaches the ``small`` pair's size (the next-token loss gradient over the trained
  weights of the base, one window alone, averaged over 4 training windows: rms 3.1e-4 per entry; the
  ``small`` delta's rms: 3.3e-4; the ``large`` delta's: 2.6e-3). It held the delta far below that
  (penalty 0.05 at the end: rms 5e-5; Adam follows the penalty's steady pull more than the loss's
  noisy gradient), so the recipe holds a second strength ten times weaker, ``l2-weak``: lambda =
  0.05, the next point of a sweep (not built or measured yet: no time left in the session that
  made ``l2``).

A fifth pair is a classifier, judged by accuracy:

* ``genre``: SmolLM2-135M fine-tuned on the training split of the ``brown-genre`` task (a Brown
  passage, then ``Genre:``, then one of four one-token labels: news, religion, science, fiction;
  the task's test split holds out every third document of each genre, so no evaluated passage's
  document is trained on). The loss is on the label token only (``CausalLMLoss`` with labels), the
  same last 10 blocks' linear layers, 200 steps of 4 prompts (800 of the 1,264 training prompts),
  lr 1e-4 (between ``small`` and ``large``, picked without a sweep), the same schedule and clip.

Each is saved once into the user cache (``$PRUNEKIT_CACHE/models/delta/smollm2-135m-brown-a-<name>``,
``smollm2-135m-brown-genre`` for the classifier; ~540 MB each, never committed) with the settings in
its ``prunekit.json``; a later call reuses it.

    python benchmarks/delta_pairs.py --pair small --pair large --pair l2 --pair l2-weak --pair genre
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

PAIRS = {"small": {"lr": 3e-5}, "large": {"lr": 3e-4}, "l2": {"lr": 3e-4, "l2": 0.5},
         "l2-weak": {"lr": 3e-4, "l2": 0.05}}
SETTINGS = {"base": "smollm2-135m", "genre": "brown:a", "held_out_tokens": 32 * 512, "seqlen": 256, "steps": 200,
            "batch_size": 1, "blocks": 10, "warmup": 10, "seed": 0}
CLASSIFIERS = {"genre": {"base": "smollm2-135m", "task": "brown-genre", "task_options": {"split": "train"},
                         "steps": 200, "batch_size": 4, "lr": 1e-4, "blocks": 10, "warmup": 10, "seed": 0}}


def pair_dir(name: str) -> Path:
    from prunekit.assets import cache_dir

    folder = f"smollm2-135m-{CLASSIFIERS[name]['task']}" if name in CLASSIFIERS else f"smollm2-135m-brown-a-{name}"
    return cache_dir() / "models" / "delta" / folder


def pair_settings(name: str) -> dict:
    """Everything that makes pair ``name`` (what its ``prunekit.json`` records)."""
    return dict(CLASSIFIERS[name]) if name in CLASSIFIERS else {**SETTINGS, **PAIRS[name]}


def prompt_stream(tokenizer, items) -> torch.Tensor:
    """The items' contexts with their right choices as one token stream (blank lines between), the
    calibration text of a classifier."""
    from prunekit.core.data_sources import token_stream
    from prunekit.evaluate.tasks.base import DELIMITER

    return token_stream([item.context + DELIMITER + item.choices[item.label] for item in items], tokenizer)


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
    from prunekit.core.train import Callback, DeltaL2, TrainConfig, train
    from prunekit.models import load_model, load_tokenizer
    from prunekit.training.recovery import CausalLMLoss, answer_prompts

    target = pair_dir(name)
    if (target / "config.json").is_file():
        return target
    if threads:
        torch.set_num_threads(threads)
    settings = pair_settings(name)
    tok, model = load_tokenizer(settings["base"]), load_model(settings["base"])
    if name in CLASSIFIERS:  # prompts with the loss on their label token
        from prunekit.core.registry import TASKS

        data = answer_prompts(tok, TASKS.build(settings["task"], settings["task_options"]).items())
    else:  # token windows with the next-token loss
        data = (training_windows(tok, settings["genre"], settings["held_out_tokens"], settings["seqlen"]), None)
    trained = trainable_linears(model, settings["blocks"])
    config = TrainConfig(steps=settings["steps"], batch_size=settings["batch_size"], optimizer="adamw",
                         lr=settings["lr"], weight_decay=0.0, schedule="cosine", warmup=settings["warmup"],
                         max_grad_norm=1.0, seed=settings["seed"])

    penalty = DeltaL2(settings["l2"]) if settings.get("l2") else None

    class Log(Callback):
        def __init__(self):
            self.t0, self.losses, self.penalties = time.perf_counter(), [], []

        def after_step(self, state, batch):
            extra = penalty.last if penalty else 0.0
            self.losses.append(float(batch.loss.detach()) - extra)  # the next-token loss alone
            self.penalties.append(extra)
            if state.step % 10 == 0 or state.step == state.total:
                mean = sum(self.losses[-10:]) / len(self.losses[-10:])
                shown = f" penalty {extra:.3f}" if penalty else ""
                log(f"{name}: step {state.step}/{state.total} loss {mean:.3f}{shown} ({time.perf_counter() - self.t0:.0f} s)")

    logger = Log()
    train(model, data, config, callbacks=[CausalLMLoss(), *([penalty] if penalty else []), logger])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    from prunekit.core.io import cache_entry

    with cache_entry(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        record = {"prunekit_version": __import__("prunekit").__version__, "source_model": settings["base"],
                  "finetune": {**settings, "windows" if data[1] is None else "prompts": len(data[0]),
                               "trained_layers": len(trained),
                               "first_loss": logger.losses[0], "last_10_loss": sum(logger.losses[-10:]) / 10,
                               **({"last_penalty": logger.penalties[-1]} if penalty else {}),
                               "seconds": time.perf_counter() - logger.t0,
                               "made_by": "benchmarks/delta_pairs.py"}}
        (tmp / "prunekit.json").write_text(json.dumps(record, indent=2))
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", action="append", choices=sorted([*PAIRS, *CLASSIFIERS]),
                    help="which pair(s) to build (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    for name in args.pair or sorted([*PAIRS, *CLASSIFIERS]):
        print(f"{name}: {build(name, args.threads, log=lambda m: print(m, flush=True))}", flush=True)


if __name__ == "__main__":
    main()
