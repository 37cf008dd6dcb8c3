"""The one verb, :func:`apply`, its :class:`Result`, and the one output, :func:`save`.

::

    result = prunekit.apply(model, "recipe.yaml", dataset=ds)            # a loaded model, in place
    result = prunekit.apply("smollm2-135m", method="wanda", sparsity=0.5,
                            nsamples=128, seqlen=2048, out="pruned")      # a folder or name: streamed
    prunekit.save(model, "pruned", tokenizer, result)                     # prunekit.json re-runs it

:func:`apply` plans and checks everything once (the recipe, the kinds of its steps, the output
folder, the calibration input, the model's config and headers), then runs the steps in order in one
:class:`~prunekit.core.session.Session`, each by its ``Step.run(session)``. This module is a door, like
the CLI: it may import every capability; the core and the capabilities never import it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.errors import PrunekitError, short_repr
from prunekit.core.recipe import CalibrationConfig, Recipe, Step, load_recipe, parse_step
from prunekit.core.registry import STEPS
from prunekit.core.session import ModelSource, Session
from prunekit.oneshot.prune import PruneResult, finish_result, manifest, open_stream, prune_streamed

CALIBRATION_FIELDS = tuple(f.name for f in dataclasses.fields(CalibrationConfig) if f.name != "source")


@dataclass
class Result:
    """What :func:`apply` did: the recipe, one result per step, and the model's parameters before and after.

    ``oneshot`` is the one-shot part (a :class:`~prunekit.oneshot.prune.PruneResult`) with every
    pruned tensor counted once, as it is at the end (a layer pruned by two steps counts with its final
    zeros). :meth:`manifest` is the ``prunekit.json`` of the output: a recipe that re-runs."""

    recipe: Recipe
    steps: list = field(default_factory=list)
    parameters_before: int = 0
    parameters_after: int = 0
    seconds: float = 0.0
    source: str = ""
    out: str | None = None

    @property
    def oneshot(self):
        return next((r for r in self.steps if isinstance(r, PruneResult)), None)

    @property
    def sparsity(self) -> float | None:
        """Fraction of zeros in the weights the one-shot steps pruned, each tensor counted once."""
        return self.oneshot.sparsity if self.oneshot is not None else None

    def to_dict(self) -> dict:
        return {"recipe": self.recipe.to_dict(), "kinds": self.recipe.kinds(),
                "steps": [_as_dict(r) for r in self.steps], "parameters_before": self.parameters_before,
                "parameters_after": self.parameters_after, "sparsity": self.sparsity, "seconds": self.seconds,
                **({"out": self.out} if self.out else {})}

    def manifest(self) -> dict:
        """``prunekit.json``: the recipe that ran (so the file re-runs with ``--recipe``) and what it did."""
        data = self.recipe.to_dict()
        result: dict = {"kinds": self.recipe.kinds(), "parameters_before": self.parameters_before,
                        "parameters_after": self.parameters_after, "seconds": self.seconds}
        if self.oneshot is not None:
            result.update(manifest(self.recipe, self.oneshot)["result"])
        others = [r for r in self.steps if not isinstance(r, PruneResult)]
        if others:
            result["steps"] = [_as_dict(r) for r in others]
        data["result"] = result
        shapes = next((r.layer_shapes for r in reversed(self.steps) if getattr(r, "layer_shapes", None)), None)
        if shapes:
            data["layer_shapes"] = shapes
        return data

    def summary(self, max_rows: int = 12) -> str:
        lines = []
        for result in self.steps:
            text = result.summary(max_rows) if isinstance(result, PruneResult) else (
                result.summary() if hasattr(result, "summary") else str(result))
            lines.append(text)
        return "\n".join(lines)

    def __getattr__(self, name: str):  # the one-shot result's fields (layers, zeros, timings...) for prune()'s users
        if name.startswith("_") or name in ("recipe", "steps"):
            raise AttributeError(name)
        oneshot = self.oneshot
        if oneshot is not None and hasattr(oneshot, name):
            return getattr(oneshot, name)
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")


def _as_dict(result) -> Any:
    return result.to_dict() if hasattr(result, "to_dict") else result


# ------------------------------------------------------------------ the verb

def as_recipe(recipe=None, **step_fields) -> Recipe:
    """A :class:`Recipe` from a Recipe, a Step, a list of steps (dataclasses or mappings), a mapping, a
    YAML/JSON path, or keyword fields of one step (``method="wanda", sparsity=0.5``; ``kind=`` picks the
    step kind, default oneshot). Calibration fields (``nsamples``, ``seqlen``, ``packing``, ``runner``...)
    given as keywords set the recipe's calibration; a name both have (``seed``) is the step's: the
    calibration's seed is set in a Recipe or a recipe file."""
    kind = STEPS.get(STEPS.canonical(step_fields.get("kind", "oneshot"))) if recipe is None else None
    own = {f.name for f in dataclasses.fields(kind)} if kind is not None else set()
    calib = {k: step_fields.pop(k) for k in list(step_fields) if k in CALIBRATION_FIELDS and k not in own}
    if recipe is None:
        if not step_fields and not calib:
            raise PrunekitError("give a recipe or the fields of a step, e.g. method='wanda', sparsity=0.5")
        recipe = Recipe(steps=[parse_step(step_fields)])
    elif step_fields:
        raise PrunekitError(f"pass either a recipe or step fields such as method=..., not both (got "
                            f"{', '.join(sorted(step_fields))} with a recipe)")
    elif isinstance(recipe, Recipe):
        pass
    elif isinstance(recipe, Step):
        recipe = Recipe(steps=[recipe])
    elif isinstance(recipe, (list, tuple)):
        recipe = Recipe(steps=[s if isinstance(s, Step) else parse_step(s, f"steps[{i}]") for i, s in enumerate(recipe)])
    elif isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe if "steps" in recipe else {"steps": [recipe]})
    elif isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe)
    else:
        raise PrunekitError(f"recipe must be a Recipe, a step, a list of steps, a mapping or a YAML/JSON path, got "
                            f"{type(recipe).__name__} {short_repr(recipe, 40)}")
    if calib:
        values = {f.name: getattr(recipe.calibration, f.name) for f in dataclasses.fields(CalibrationConfig)}
        recipe = Recipe(steps=list(recipe.steps), calibration=CalibrationConfig(**{**values, **calib}))
    return recipe


def check_model_input(model) -> nn.Module:
    """The module to prune: a loaded model (a ``PeftModel`` is refused in one line)."""
    if type(model).__name__.startswith("Peft") or hasattr(model, "peft_config"):
        raise PrunekitError("a PeftModel holds adapters that pruning would mix with the base weights: prune the base "
                            "model before adding adapters, or merge them first (model = model.merge_and_unload(); "
                            "prunekit.remask(model, masks) re-applies masks after a merge)")
    if not isinstance(model, nn.Module):
        raise PrunekitError(f"model must be a loaded torch model or a folder / name / hub id, got "
                            f"{type(model).__name__} {short_repr(model, 40)}")
    return model


def apply(model_or_path, recipe=None, *, dataset=None, tokenizer=None, out: str | Path | None = None,
          overwrite: bool = False, progress: bool = True, device: str | None = None, dtype: str = "auto",
          stream: bool | None = None, trust_pickle_weights: bool = False, base=None, on_load=None,
          **step_fields) -> Result:
    """Run a recipe on a model and return a :class:`Result`.

    ``model_or_path`` is a loaded model (changed in place) or a folder, embedded name or hub id
    (loaded in ``dtype``, ``"auto"``: the checkpoint's own; a one-step one-shot recipe is streamed
    block by block when it can, ``stream=True`` makes that an error when not, ``False`` never
    streams). ``recipe``: see :func:`as_recipe`; or keyword fields of one step. ``dataset`` is the
    calibration input (overrides the recipe's source): ``brown[:genres]``, a text file, a list of
    strings (one window per string; ``packing=True`` joins them), a ``datasets.Dataset`` or
    ``IterableDataset`` (a ``text`` column or ``input_ids`` [+ ``attention_mask``]), a DataLoader of
    dicts, a ``BatchEncoding``, a tensor of token ids. ``out``: the folder the result is saved to
    (atomically, with a re-runnable ``prunekit.json``; required for a streamed run). ``base``: the base
    model of delta steps. ``None`` as the model runs recipes of training steps (they build their own).
    ``on_load(why)``, if given, is called before a whole model loads, with why it is not streamed."""
    from prunekit.core.data_sources import check_source
    from prunekit.core.memory import lean_allocator

    recipe = as_recipe(recipe, **step_fields)
    plan_kinds(recipe)
    if isinstance(dataset, (str, Path)):
        check_source(str(dataset))
    check_source(recipe.calibration.source)
    start = time.perf_counter()
    lean_allocator()
    if isinstance(model_or_path, (str, Path)):
        source = ModelSource(model_or_path, trust_pickle_weights)
        _plan_calibration(source, recipe, dataset, dtype)
        streamed = _try_stream(source, recipe, out, overwrite, dataset, tokenizer, progress, device, dtype, stream)
        if streamed is not None:
            return streamed
        if on_load is not None:
            on_load(getattr(source, "why_in_memory", None))
        model = _load(source, recipe, out, overwrite, dtype)
    elif model_or_path is None:
        if any(step.name != "training" for step in recipe.steps):
            raise PrunekitError("give the model to prune (a loaded model, a folder, an embedded name or a hub id); "
                                "only training steps build their own")
        if out is not None:
            raise PrunekitError("a training step saves its checkpoint with prunekit train --output, not out=")
        source, model = None, None
    else:
        source, model = None, check_model_input(model_or_path)
        if out is not None:
            from prunekit.core.io import check_output

            check_output(out, overwrite)
    session = Session(recipe, model, source, dataset, progress, device, base=base)
    if tokenizer is not None:
        session.tokenizer = tokenizer
    before = _count(model)
    for step in recipe.steps:
        done = step.run(session)
        if not any(done is r for r in session.results):  # the one-shot steps share one result
            session.results.append(done)
    result = Result(recipe, session.results, before, _count(session.model), time.perf_counter() - start,
                    source.shown if source is not None else "")
    _finish_oneshot(result, session.model)
    if out is not None:
        result.out = str(save(session.model, out, session.tokenizer, result, overwrite=overwrite,
                              source=source.path if source is not None else None))
    return result


def needs_windows(step: Step) -> bool:
    """Whether a step runs calibration windows through the model."""
    if step.name == "oneshot":
        return step.build().needs_calibration or step.allocation == "owl"
    if step.name == "delta":
        return step.build().needs_calibration
    return step.name == "structured"


def _plan_calibration(source: ModelSource, recipe: Recipe, dataset, dtype) -> None:
    """Before any weights load: the windows fit the model's positions and this machine's memory (only
    when a step runs windows: a magnitude prune runs on a model of any length)."""
    from prunekit.core.budget import check_calibration
    from prunekit.models.loading import check_dtype, check_seqlen, resolve_dtype

    if not any(needs_windows(step) for step in recipe.steps):
        return
    data = recipe.calibration.source if dataset is None else dataset
    ready = isinstance(data, torch.Tensor) and data.dim() == 2  # ready-made windows: their own length
    check_seqlen(source.config, data.shape[1] if ready else recipe.calibration.seqlen, "calibration seqlen")
    check_calibration(source.config, recipe.calibration, resolve_dtype(check_dtype(dtype), source.config))
    if not isinstance(data, torch.Tensor):
        source.tokenizer  # noqa: B018 - loaded (once) and checked against the embedding table before any weights


def plan_kinds(recipe: Recipe) -> None:
    """Every step kind can run in a session; a selection step is data work (one line naming its command)."""
    for i, step in enumerate(recipe.steps):
        if not hasattr(step, "run"):
            raise PrunekitError(f"steps[{i}] ({step.name}) cannot run on a model")
        plan = getattr(step, "plan", None)
        if plan is not None:
            plan(recipe, i)


def _count(model: nn.Module | None) -> int:
    return sum(p.numel() for p in model.parameters()) if model is not None else 0


def _finish_oneshot(result: Result, model) -> None:
    if result.oneshot is not None and model is not None:
        finish_result(result.oneshot, _count(model))


def _load(source: ModelSource, recipe: Recipe, out, overwrite: bool, dtype: str) -> nn.Module:
    """The whole model in memory, every check that needs no weights first."""
    from prunekit.core.io import check_output
    from prunekit.models.loading import check_dtype, load_model

    check_dtype(dtype)
    source.config  # noqa: B018 - a bad model argument stops here, before anything loads
    source.check_weights()
    if out is not None:
        check_output(out, overwrite, inputs=(source.shown, source.path))
    return load_model(source.path, dtype=dtype, trust_pickle_weights=source.trust_pickle_weights)


def _try_stream(source: ModelSource, recipe: Recipe, out, overwrite, dataset, tokenizer, progress, device, dtype,
                stream) -> Result | None:
    """The result of a streamed run, or None when the recipe runs in memory (why is printed by the CLI)."""
    if stream is False or (out is None and not stream):
        return None
    plan = open_stream(recipe, source, stream, dtype)
    if plan is None:
        return None
    if out is None:
        raise PrunekitError("a streamed prune writes its output block by block: give out=FOLDER (or stream=False)")
    start = time.perf_counter()
    pruned = prune_streamed(plan, out, recipe, dataset, tokenizer, progress, device, overwrite)
    result = Result(recipe, [pruned], pruned.parameters, pruned.parameters, time.perf_counter() - start,
                    source.shown, str(Path(out).expanduser().resolve()))
    return result


# ------------------------------------------------------------------ the one output

def save(model: nn.Module, out: str | Path, tokenizer=None, result: Result | None = None, *,
         overwrite: bool = False, source: str | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``) to ``out`` atomically with a ``prunekit.json`` that is itself a
    re-runnable recipe (``prunekit prune --recipe OUT/prunekit.json``); ``result`` is what :func:`apply`
    (or :func:`prunekit.prune`) returned."""
    from prunekit.core.io import save_pretrained

    return save_pretrained(model, out, tokenizer, manifest=manifest_of(result), overwrite=overwrite, source=source)


def manifest_of(result) -> dict | None:
    """The ``prunekit.json`` of a result of :func:`apply` or :func:`prunekit.prune` (None: none)."""
    if result is None:
        return None
    if isinstance(result, Result):
        return result.manifest()
    if isinstance(result, PruneResult):
        return manifest(Recipe.from_dict(result.recipe), result)
    if isinstance(result, dict):
        return result
    raise PrunekitError(f"result must be what prunekit.apply or prunekit.prune returned, got {type(result).__name__}")


# ------------------------------------------------------------------ the one-shot aliases

def _oneshot_only(recipe: Recipe) -> Recipe:
    other = next((s.name for s in recipe.steps if s.name != "oneshot"), None)
    if other is not None:
        raise PrunekitError(f"prunekit.prune runs oneshot steps, not {other!r} steps; prunekit.apply runs every kind")
    return recipe


def prune(model: nn.Module, recipe=None, calibration=None, tokenizer=None, progress: bool = True,
          device: str | None = None, **step_fields) -> PruneResult:
    """:func:`apply` for one-shot recipes on a model in memory, returning the one-shot
    :class:`~prunekit.oneshot.prune.PruneResult` (``prune(model, method="wanda", sparsity=0.5)``);
    ``calibration`` is ``apply``'s ``dataset``."""
    recipe = _oneshot_only(as_recipe(recipe, **step_fields))
    return apply(check_model_input(model), recipe, dataset=calibration, tokenizer=tokenizer, progress=progress,
                 device=device).oneshot


def prune_pretrained(model: str | Path, out: str | Path, recipe=None, calibration=None, tokenizer=None,
                     progress: bool = True, device: str | None = None, overwrite: bool = False,
                     dtype: str = "auto", **step_fields) -> PruneResult:
    """:func:`apply` streamed (``stream=True``): the folder, name or hub id ``model`` pruned block by block
    into ``out``; a recipe that cannot stream is a one-line error naming the in-memory path."""
    recipe = _oneshot_only(as_recipe(recipe, **step_fields))
    return apply(str(model), recipe, dataset=calibration, tokenizer=tokenizer, out=out, overwrite=overwrite,
                 progress=progress, device=device, dtype=dtype, stream=True).oneshot
