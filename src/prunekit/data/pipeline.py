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

from prunekit.core.checkpoint import load_state, save_state_atomic
from prunekit.core.errors import PrunekitError, unknown_choice
from prunekit.core.registry import SCORES
from prunekit.data.dynamics import TrainingDynamics
from prunekit.data.runs import fingerprint, open_run
from prunekit.data.scores.base import Score, ScoreContext
from prunekit.data.table import ScoreTable
from prunekit.data.train import Budget, fit


def classifier_scores() -> list[str]:
    """The registered scores of a classification dataset (all but the language-model ones)."""
    return [name for name in SCORES.names() if SCORES.get(name).stage() != "text"]


def build_scores(names: Sequence[str], allowed: Sequence[str], options: dict | None = None,
                 what: str = "a classification dataset") -> dict[str, Score]:
    """The score entries ``names`` (in order, each once), built with their checked ``options``.

    A name that is not a registered score gets the did-you-mean error; one that is registered but not
    in ``allowed`` (e.g. a text score for images) says so and names the choices for ``what``."""
    if not names:
        raise PrunekitError(f"no data scores requested; choices for {what}: {', '.join(allowed)}")
    built = {}
    for name in names:
        if name not in SCORES:
            raise unknown_choice("data score", name, allowed)
        canonical = SCORES.canonical(name)
        if canonical not in allowed:
            raise PrunekitError(f"data score {name!r} does not apply to {what}; choices: {', '.join(allowed)}")
        built[canonical] = SCORES.build(canonical, (options or {}).get(canonical))
    return built


def _compute(scores: dict[str, Score], ctx: ScoreContext) -> dict[str, np.ndarray]:
    return {name: score(ctx) for name, score in scores.items()}


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

    ``scores`` are names of :data:`~prunekit.core.registry.SCORES`; each score's ``needs`` decides when
    it is taken (:data:`~prunekit.data.scores.base.STAGES`): without training, at every scoring epoch,
    or at the end of each seed's run. ``kcenter_centers`` is the ``n_centers`` option of ``kcenter``.

    ``out`` is a run folder (see :mod:`prunekit.data.runs`): its ``run.json`` records the whole
    configuration (``config``'s entries first, e.g. the dataset name, then the scores, seeds, epochs,
    and fingerprints of the examples and labels); rerunning resumes only that configuration.
    """
    wanted = build_scores(scores, classifier_scores(), {"kcenter": {"n_centers": kcenter_centers}})
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
    run_config = {**(config or {}), "scores": sorted(wanted), "seeds": seeds, "epochs": int(epochs),
                  "score_epochs": score_epochs, "batch_size": int(batch_size), "lr": float(lr),
                  "kcenter_centers": kcenter_centers, "format": fmt, "n_examples": len(x),
                  "examples": fingerprint(hashes), "labels": fingerprint(y)}
    out = open_run(out, "data score", run_config)  # refuses another run's folder before anything is written
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    at_epoch = {n: s for n, s in wanted.items() if s.stage() == "epoch"}
    at_end = {n: s for n, s in wanted.items() if s.stage() == "end"}
    snapshots = any("checkpoints" in s.needs for s in at_end.values())
    for seed in seeds:
        final = work / f"seed{seed}_final.npz"
        if final.is_file() or not (at_epoch or at_end):
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
                _save_scores(path, _compute(at_epoch, ScoreContext(x=x, y=y, seed=seed, model=m)))
            if snapshots:
                save_state_atomic(work / f"seed{seed}_epoch{ep}.safetensors", {"model": m.state_dict()})

        steps = Budget("equal-epochs", epochs).steps(len(x), len(x), batch_size)
        fit(model, x, y, steps=steps, batch_size=batch_size, lr=lr, seed=seed, dynamics=dyn,
            on_epoch_end=at_epoch_end, checkpoint_path=work / f"seed{seed}.ckpt", progress=progress)
        checkpoints = []
        if snapshots:
            for ep in score_epochs:
                m = model_fn()
                _load_snapshot(m, work / f"seed{seed}_epoch{ep}.safetensors")
                checkpoints.append(m)
            checkpoints.append(model)
        ctx = ScoreContext(x=x, y=y, seed=seed, model=model, dynamics=dyn, checkpoints=checkpoints)
        _save_scores(final, _compute(at_end, ctx))
    return assemble_table(work, x, y, hashes, wanted, seeds, score_epochs, epochs, out, meta, fmt)


def _save_scores(path: Path, values: dict[str, np.ndarray]) -> None:
    """One checkpoint's scores, written beside and renamed: never half a file."""
    from prunekit.core.io import replace_file

    with replace_file(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **values)


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
                raise PrunekitError(f"{name!r} has shape {v.shape} and dtype {v.dtype}, expected ({n},) numbers")
    except Exception as exc:  # noqa: BLE001 - a broken or foreign file is one line, whatever broke
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrunekitError(f"score file {str(path)!r} is not a prunekit score file ({first}); delete it to "
                            "recompute it") from None
    return res


def assemble_table(work, x, y, hashes, scores, seeds, score_epochs, epochs, out, meta, fmt="parquet") -> ScoreTable:
    """Collect the per-checkpoint score files of ``work`` into one table and save it.

    ``scores`` maps names to built score entries (or is a list of names); each row records its
    score's ``direction``. Scores taken without training (random) are computed here, per seed."""
    if not isinstance(scores, dict):
        scores = {name: SCORES.build(name) for name in scores}
    table = ScoreTable(manifest={**(meta or {}), "seeds": list(seeds), "epochs": epochs,
                                 "score_epochs": list(score_epochs)})
    labels = y.tolist()

    def add(name: str, values: np.ndarray, **where) -> None:
        if name in scores:
            table.add(name, values, hashes, labels=labels, direction=scores[name].direction, **where)

    untrained = {n: s for n, s in scores.items() if s.stage() == "untrained"}
    for seed in seeds:
        for name, values in _compute(untrained, ScoreContext(x=x, y=y, seed=seed)).items():
            add(name, values, seed=seed)
        for ep in score_epochs:
            path = work / f"seed{seed}_epoch{ep}.npz"
            if path.is_file():
                for name, values in _read_scores(path, len(x)).items():
                    add(name, values, seed=seed, checkpoint=ep)
        final = work / f"seed{seed}_final.npz"
        if final.is_file():
            for name, values in _read_scores(final, len(x)).items():
                add(name, values, seed=seed, checkpoint=epochs)
    table.save(out, fmt)
    return table
