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

from prunekit.core.errors import PrunekitError
from prunekit.data.dynamics import TrainingDynamics
from prunekit.data.runs import fingerprint, load_state, open_run, save_state
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
    config: dict | None = None,
) -> ScoreTable:
    """Score every example of ``(x, y)``; returns (and saves into ``out``) the :class:`ScoreTable`.

    ``out`` is a run folder (see :mod:`prunekit.data.runs`): its ``run.json`` records the whole
    configuration (``config``'s entries first, e.g. the dataset name, then the scores, seeds, epochs,
    and fingerprints of the examples and labels); rerunning resumes only that configuration.
    """
    unknown = sorted(set(scores) - set(VISION_SCORES))
    if unknown:
        raise PrunekitError(f"unknown score(s) {unknown}; choices: {', '.join(VISION_SCORES)}")
    if not scores:
        raise PrunekitError(f"no scores requested; choices: {', '.join(VISION_SCORES)}")
    if fmt not in ("parquet", "npz"):
        raise PrunekitError(f"format {fmt!r} is not one of parquet, npz")
    seeds, score_epochs = [int(s) for s in seeds], sorted(int(e) for e in score_epochs)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise PrunekitError(f"seeds {seeds} must be distinct non-negative integers (at least one)")
    if epochs < 1 or not score_epochs or len(set(score_epochs)) != len(score_epochs) or not (
            1 <= score_epochs[0] and score_epochs[-1] <= epochs):
        raise PrunekitError(f"score epochs {score_epochs} must be distinct epochs in [1, {epochs}] (at least one)")
    if len(x) != len(y) or len(x) != len(hashes) or len(x) == 0:
        raise PrunekitError(f"{len(x)} examples, {len(y)} labels and {len(hashes)} hashes: they must match (and be > 0)")
    if model_fn is None:
        from prunekit.zoo import SmallCNN

        model_fn = SmallCNN
    run_config = {**(config or {}), "scores": sorted(set(scores)), "seeds": seeds, "epochs": int(epochs),
                  "score_epochs": score_epochs, "batch_size": int(batch_size), "lr": float(lr),
                  "kcenter_centers": kcenter_centers, "format": fmt, "n_examples": len(x),
                  "examples": fingerprint(hashes), "labels": fingerprint(y)}
    out = open_run(out, "data score", run_config)  # refuses another run's folder before anything is written
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
                save_state(work / f"seed{seed}_epoch{ep}.safetensors", {"model": m.state_dict()})

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
                _load_snapshot(m, work / f"seed{seed}_epoch{ep}.safetensors")
                ckpts.append(m)
            ckpts.append(model)
            res["vog"] = vog_scores(ckpts, x, y) if len(ckpts) >= 2 else np.full(len(x), np.nan)
        np.savez(work / f"seed{seed}_final.tmp.npz", **res)
        (work / f"seed{seed}_final.tmp.npz").replace(final)
    return assemble_table(work, x, y, hashes, scores, seeds, score_epochs, epochs, out, meta, fmt)


def _load_snapshot(model: nn.Module, path: Path) -> None:
    state = load_state(path)  # safetensors + JSON: never runs code
    try:
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrunekitError(f"VoG snapshot {str(path)!r} does not fit the model ({first}); delete it") from None


def _read_scores(path: Path, n: int) -> dict[str, np.ndarray]:
    """A per-checkpoint score file of ``work/``: plain float arrays of length ``n`` (object arrays are refused)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            res = {name: np.asarray(f[name]) for name in f.files}
        for name, v in res.items():
            if v.shape != (n,) or v.dtype.kind not in "fiu":
                raise ValueError(f"{name!r} has shape {v.shape} and dtype {v.dtype}, expected ({n},) numbers")
    except Exception as exc:  # noqa: BLE001 - a broken or foreign file is one line, whatever broke
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrunekitError(f"score file {str(path)!r} is not a prunekit score file ({first}); delete it to "
                            "recompute it") from None
    return res


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
                for name, values in _read_scores(path, len(x)).items():
                    if name in scores:
                        table.add(name, values, hashes, labels=labels, seed=seed, checkpoint=ep)
        final = work / f"seed{seed}_final.npz"
        if final.is_file():
            for name, values in _read_scores(final, len(x)).items():
                if name in scores:
                    table.add(name, values, hashes, labels=labels, seed=seed, checkpoint=epochs,
                              direction=DIRECTIONS.get(name, "higher=harder"))
    table.save(out, fmt)
    return table
