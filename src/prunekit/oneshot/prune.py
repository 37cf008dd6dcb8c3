"""``prune(model, recipe, calibration=...)``: the one verb of one-shot pruning.

The flow of one step: resolve target layers -> per-layer sparsities (uniform, global, OWL) ->
for each block: collect calibration statistics, prune each layer as soon as its statistics are
complete, pass the pruned outputs on -> report.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from prunekit.core.calibration import walk_blocks
from prunekit.core.registry import ALLOCATIONS
from prunekit.core.data_sources import calibration_windows, describe_source
from prunekit.core.masks import check_pattern_fits, parse_pattern
from prunekit.core.memory import lean_allocator, peak_rss_mb
from prunekit.core.stats import LayerStats, collect_gradients
from prunekit.oneshot.base import LayerContext
from prunekit.oneshot.wanda import wanda_scores
from prunekit.core.families import Adapter, adapter_for, weight_view
from prunekit.core.errors import PrunekitError
from prunekit.core.recipe import CalibrationConfig, Recipe
from prunekit.oneshot.step import PruneStep
from prunekit.core.targets import select_layers


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    target: float  # sparsity asked for
    sparsity: float  # fraction of zeros after pruning
    pattern: str
    method: str


@dataclass
class PruneResult:
    layers: list[LayerReport] = field(default_factory=list)
    parameters: int = 0  # all parameters of the model
    targeted: int = 0  # parameters in pruned layers
    zeros: int = 0  # zeros in pruned layers
    seconds: float = 0.0
    peak_rss_mb: float = 0.0  # peak resident memory of this process so far
    timings: dict = field(default_factory=dict)
    calibration: str = ""
    recipe: dict = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        return self.zeros / max(self.targeted, 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["sparsity"] = self.sparsity
        return data

    def summary(self, max_rows: int = 12) -> str:
        lines = [f"{'layer':<44} {'shape':>12} {'target':>7} {'sparsity':>8} {'pattern':>12}"]
        rows = self.layers if len(self.layers) <= max_rows else self.layers[: max_rows // 2] + [None] + self.layers[-max_rows // 2 :]
        for r in rows:
            if r is None:
                lines.append(f"{'...':<44}")
                continue
            shape = f"{r.shape[0]}x{r.shape[1]}"
            lines.append(f"{r.name:<44} {shape:>12} {r.target:>7.3f} {r.sparsity:>8.3f} {r.pattern:>12}")
        lines.append(
            f"{len(self.layers)} layers, {self.zeros:,} of {self.targeted:,} weights zero ({self.sparsity:.2%}); "
            f"model {self.parameters:,} parameters; {self.seconds:.1f} s; peak RSS {self.peak_rss_mb:,.0f} MB"
        )
        return "\n".join(lines)


def as_recipe(recipe=None, **step_fields) -> Recipe:
    """Accept a Recipe, a PruneStep, a dict, a recipe file path, or plain step fields."""
    if recipe is None:
        return Recipe(steps=[PruneStep(**step_fields)])
    if step_fields:
        raise TypeError("pass either a recipe or step fields such as method=..., not both")
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, PruneStep):
        return Recipe(steps=[recipe])
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    from prunekit.core.recipe import load_recipe

    return load_recipe(recipe)


def prune(model: nn.Module, recipe=None, calibration=None, tokenizer=None, progress: bool = True,
          device: torch.device | str | None = None, **step_fields) -> PruneResult:
    """Prune ``model`` in place and return a :class:`PruneResult`.

    ``recipe`` is a :class:`Recipe`, a :class:`PruneStep`, a dict, a YAML/JSON path, or omitted
    in favour of step fields (``prune(model, method="wanda", sparsity=0.5)``). ``calibration``
    overrides the recipe's calibration source: ``"brown"``, ``"brown:b-h"``, a text file, a list
    of strings, or a LongTensor of token ids (windows x seqlen). ``device`` runs each block on
    that device in turn while the model and activations stay where they are.
    """
    recipe = as_recipe(recipe, **step_fields)
    other = next((s.name for s in recipe.steps if not isinstance(s, PruneStep)), None)
    if other is not None:
        raise PrunekitError(f"prunekit.prune runs oneshot steps, not {other!r} steps (structured: "
                            "prunekit.structured.recipe.apply_step; training: prunekit train; selection: prunekit data)")
    lean_allocator()  # one malloc arena for the runner's threads (see memory.py)
    calib = recipe.calibration
    source = calib.source if calibration is None else calibration
    start = time.perf_counter()
    adapter = adapter_for(model)
    result = PruneResult(recipe=recipe.to_dict(), calibration=describe_source(source))
    for step in recipe.steps:
        _run_step(adapter, step, calib, source, tokenizer, result, progress, device)
    result.parameters = sum(p.numel() for p in model.parameters())
    result.targeted = sum(r.shape[0] * r.shape[1] for r in result.layers)
    result.zeros = int(sum(round(r.sparsity * r.shape[0] * r.shape[1]) for r in result.layers))
    result.seconds = time.perf_counter() - start
    result.peak_rss_mb = peak_rss_mb()
    return result


# ------------------------------------------------------------------ one step

def _target_layers(adapter: Adapter, step: PruneStep) -> list[dict[str, nn.Module]]:
    per_block = [select_layers(adapter.linears(i), step.targets, step.ignore) for i in range(len(adapter.blocks))]
    if not any(per_block):
        raise ValueError(f"targets {step.targets} minus ignore {step.ignore} match no layer in the model's blocks")
    return per_block


def _windows(adapter: Adapter, calib: CalibrationConfig, source, tokenizer) -> torch.Tensor:
    if tokenizer is None and not isinstance(source, torch.Tensor):
        from prunekit.models import load_tokenizer

        tokenizer = load_tokenizer(adapter.model.config._name_or_path)
    return calibration_windows(source, tokenizer, calib.nsamples, calib.seqlen, calib.seed)


def _run_step(adapter, step, calib, source, tokenizer, result, progress, device=None) -> None:
    method = step.build()
    pattern = parse_pattern(step.pattern)
    per_block = _target_layers(adapter, step)
    for layers in per_block:
        for name, module in layers.items():
            check_pattern_fits(pattern, weight_view(module).shape[1], name)
    needs_data = method.needs_calibration or step.allocation == "owl"
    windows = _windows(adapter, calib, source, tokenizer) if needs_data else None
    t0 = time.perf_counter()
    ratios = _allocate(adapter, step, per_block, windows, calib, progress, device)
    result.timings[f"{step.method}:allocation_s"] = time.perf_counter() - t0
    gradients = {}
    if "gradients" in method.needs:
        t0 = time.perf_counter()
        layers = {k: v for b in per_block for k, v in b.items()}
        gradients = collect_gradients(adapter.model, windows, layers, method.gradient_reduction, progress=progress)
        result.timings[f"{step.method}:gradients_s"] = time.perf_counter() - t0

    def prune_layer(name: str, module: nn.Module, stats: LayerStats | None) -> None:
        weight = weight_view(module)
        gen = torch.Generator().manual_seed(step.seed * 1_000_003 + zlib.crc32(name.encode()))
        grad = gradients[name].weight if name in gradients else None
        ctx = LayerContext(name, stats, grad, gen)
        with torch.no_grad():
            mask = method.prune_layer(weight, ratios[name], pattern, ctx)
            weight[mask] = 0.0
        zeros = int((weight == 0).sum())
        result.layers.append(LayerReport(name, tuple(weight.shape), ratios[name], zeros / weight.numel(),
                                         str(pattern), step.method))

    t0 = time.perf_counter()
    if method.needs_calibration:
        walk_blocks(adapter.model, adapter.blocks, windows, calib.chunk_size, per_block, prune_layer,
                    needs=method.needs, progress=progress, desc=f"{step.method}", device=device)
    else:
        for layers in tqdm(per_block, desc=step.method, disable=not progress, leave=False):
            for name, module in layers.items():
                prune_layer(name, module, None)
    result.timings[f"{step.method}:prune_s"] = time.perf_counter() - t0


# ------------------------------------------------------------------ allocation

def _allocate(adapter, step, per_block, windows, calib, progress, device=None) -> dict[str, float]:
    """Per-layer sparsities from the core allocation the step names (:mod:`prunekit.core.allocation`)."""
    weights = {name: weight_view(m) for layers in per_block for name, m in layers.items()}
    if step.allocation == "uniform":
        return ALLOCATIONS.build("uniform").ratios(weights, step.sparsity)
    if step.allocation == "global":  # one |W| threshold over all target layers
        return ALLOCATIONS.build("global").ratios({n: w.abs() for n, w in weights.items()}, step.sparsity)
    owl = ALLOCATIONS.build("owl", {"lam": step.owl_lambda, "m": step.owl_m})
    block_ratio = owl.ratios(_owl_block_scores(adapter, per_block, windows, calib, progress, device), step.sparsity)
    return {name: block_ratio[i] for i, layers in enumerate(per_block) for name in layers}


def _owl_block_scores(adapter, per_block, windows, calib, progress, device=None) -> dict[int, torch.Tensor]:
    """OWL's input: one dense pass collects the Wanda scores of each block, pooled (flat) per block."""
    block_scores: dict[int, list[torch.Tensor]] = {}
    block_of = {name: i for i, layers in enumerate(per_block) for name in layers}

    def collect(name, module, stats):
        block_scores.setdefault(block_of[name], []).append(wanda_scores(weight_view(module), stats).reshape(-1))

    walk_blocks(adapter.model, adapter.blocks, windows, calib.chunk_size, per_block, collect, needs={"norms"},
                progress=progress, desc="owl scores", device=device)
    return {i: torch.cat(block_scores.pop(i)) for i in sorted(block_scores)}  # pop: one block's copy at a time
