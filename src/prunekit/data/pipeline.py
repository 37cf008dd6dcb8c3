"""End-to-end scoring of a classification dataset, resumable checkpoint by checkpoint.

For each seed a model trains on the full dataset. Model-based scores (loss, EL2N, GraNd,
uncertainty) are computed at the requested epochs ("early in training" for EL2N/GraNd); dynamics
scores (forgetting, AUM) come from the whole run; VoG from the scoring checkpoints; k-center from
the final embeddings. Every finished checkpoint's scores are written to ``<out>/work/`` before
training continues, and training state is checkpointed every epoch, so a crash loses at most one
checkpoint of work; rerunning the same command resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunekit.data.dynamics import TrainingDynamics
from prunekit.data.scores import (
    el2n_from_logits,
    grand_full,
    kcenter_scores,
    loss_from_logits,
    random_scores,
    uncertainty_from_logits,
    vog_scores,
)
from prunekit.data.scores._common import batched_logits_and_embeddings
from prunekit.data.scores.aum import DIRECTION as AUM_DIRECTION
from prunekit.data.scores.forgetting import DIRECTION as FORGETTING_DIRECTION
from prunekit.data.scores.geometry import DIRECTION as KCENTER_DIRECTION
from prunekit.data.scores.random_score import DIRECTION as RANDOM_DIRECTION
from prunekit.data.table import ScoreTable
from prunekit.data.train import Budget, fit

MODEL_SCORES = ("loss", "el2n", "grand", "grand_last_layer", "entropy", "margin", "least_confidence")
DYNAMICS_SCORES = ("forgetting", "aum")
OTHER_SCORES = ("random", "vog", "kcenter")
VISION_SCORES = MODEL_SCORES + DYNAMICS_SCORES + OTHER_SCORES
DIRECTIONS = {"forgetting": FORGETTING_DIRECTION, "aum": AUM_DIRECTION, "kcenter": KCENTER_DIRECTION,
              "random": RANDOM_DIRECTION}


def model_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The requested model-based scores from one forward pass (plus per-example grads for full GraNd)."""
    logits, h = batched_logits_and_embeddings(model, x)
    out = {}
    for name in names:
        if name == "loss":
            out[name] = loss_from_logits(logits, y)
        elif name == "el2n":
            out[name] = el2n_from_logits(logits, y)
        elif name == "grand_last_layer":
            err = logits.softmax(1) - torch.nn.functional.one_hot(y.long(), logits.shape[1]).float()
            out[name] = (err.norm(dim=1) * (h.pow(2).sum(1) + 1).sqrt()).numpy()
        elif name == "grand":
            out[name] = grand_full(model, x, y)
        elif name in ("entropy", "margin", "least_confidence"):
            out[name] = uncertainty_from_logits(logits, name)
    return out


def score_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    hashes: Sequence[str],
    scores: Sequence[str],
    out: str | Path,
    *,
    seeds: Sequence[int] = (0,),
    epochs: int = 3,
    score_epochs: Sequence[int] = (1,),
    model_fn: Callable[[], nn.Module] | None = None,
    batch_size: int = 128,
    lr: float = 0.05,
    kcenter_centers: int | None = 2000,
    progress: bool = True,
    meta: dict | None = None,
    fmt: str = "parquet",
) -> ScoreTable:
    """Score every example of ``(x, y)``; returns (and saves into ``out``) the :class:`ScoreTable`."""
    unknown = sorted(set(scores) - set(VISION_SCORES))
    if unknown:
        raise ValueError(f"unknown score(s) {unknown}; choices: {', '.join(VISION_SCORES)}")
    if model_fn is None:
        from prunekit.zoo import SmallCNN

        model_fn = SmallCNN
    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    wanted_model = [s for s in scores if s in MODEL_SCORES]
    needs_training = any(s != "random" for s in scores)
    for seed in seeds:
        final = work / f"seed{seed}_final.npz"
        if final.is_file() or not needs_training:
            continue
        torch.manual_seed(seed)
        model = model_fn()
        dyn = TrainingDynamics(len(x))

        def at_epoch_end(epoch: int, m: nn.Module, seed=seed) -> None:
            ep = epoch + 1
            if ep not in score_epochs:
                return
            path = work / f"seed{seed}_epoch{ep}.npz"
            if not path.is_file():
                res = model_scores(m, x, y, wanted_model)
                np.savez(path.with_suffix(".tmp.npz"), **res)
                path.with_suffix(".tmp.npz").replace(path)
            if "vog" in scores:
                torch.save(m.state_dict(), work / f"seed{seed}_epoch{ep}.pt")

        steps = Budget("equal-epochs", epochs).steps(len(x), len(x), batch_size)
        fit(model, x, y, steps=steps, batch_size=batch_size, lr=lr, seed=seed, dynamics=dyn,
            on_epoch_end=at_epoch_end, checkpoint_path=work / f"seed{seed}.ckpt", progress=progress)
        res = {"forgetting": dyn.forgetting(), "aum": dyn.aum()}
        if "kcenter" in scores:
            _, h = batched_logits_and_embeddings(model, x)
            res["kcenter"] = kcenter_scores(h, n_centers=kcenter_centers, seed=seed)
        if "vog" in scores:
            ckpts = []
            for ep in sorted(score_epochs):
                m = model_fn()
                m.load_state_dict(torch.load(work / f"seed{seed}_epoch{ep}.pt"))
                ckpts.append(m)
            ckpts.append(model)
            res["vog"] = vog_scores(ckpts, x, y) if len(ckpts) >= 2 else np.full(len(x), np.nan)
        np.savez(work / f"seed{seed}_final.tmp.npz", **res)
        (work / f"seed{seed}_final.tmp.npz").replace(final)
    return assemble_table(work, x, y, hashes, scores, seeds, score_epochs, epochs, out, meta, fmt)


def assemble_table(work, x, y, hashes, scores, seeds, score_epochs, epochs, out, meta, fmt="parquet") -> ScoreTable:
    """Collect the per-checkpoint score files of ``work`` into one table and save it."""
    table = ScoreTable(manifest={**(meta or {}), "seeds": list(seeds), "epochs": epochs,
                                 "score_epochs": list(score_epochs)})
    labels = y.tolist()
    for seed in seeds:
        if "random" in scores:
            table.add("random", random_scores(len(x), seed), hashes, labels=labels, seed=seed,
                      direction=RANDOM_DIRECTION)
        for ep in score_epochs:
            path = work / f"seed{seed}_epoch{ep}.npz"
            if path.is_file():
                with np.load(path) as f:
                    for name in f.files:
                        if name in scores:
                            table.add(name, f[name], hashes, labels=labels, seed=seed, checkpoint=ep)
        final = work / f"seed{seed}_final.npz"
        if final.is_file():
            with np.load(final) as f:
                for name in f.files:
                    if name in scores:
                        table.add(name, f[name], hashes, labels=labels, seed=seed, checkpoint=epochs,
                                  direction=DIRECTIONS.get(name, "higher=harder"))
    table.save(out, fmt)
    return table
