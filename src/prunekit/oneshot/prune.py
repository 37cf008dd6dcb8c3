"""``prune(model, recipe, calibration=...)``: the one verb of one-shot pruning.

The flow of one step: resolve target layers -> per-layer sparsities (uniform, global, OWL) ->
for each block: collect calibration statistics, prune each layer as soon as its statistics are
complete, pass the pruned outputs on -> report.

Two ways in, the same masks:

* :func:`prune` prunes a model already in memory, in place.
* :func:`prune_pretrained` prunes a checkpoint folder (or an embedded name, or a hub id) into an
  output folder without ever holding the whole model (:mod:`prunekit.core.shards`): the model is
  built without weights, the embeddings and then one block at a time are read from the
  safetensors shards, calibrated, pruned, written to the output shards and freed. Global
  allocation reads the target weights once beforehand (one layer at a time); OWL streams the
  blocks twice (dense Wanda scores, then pruning). GBLM needs gradients of the whole model and
  recipes of several steps prune in memory (:func:`stream_plan` says why).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from prunekit.core.calibration import BlockWeights, resolve_compute_dtype, walk_blocks
from prunekit.core.registry import ALLOCATIONS
from prunekit.core.data_sources import calibration_windows, describe_source
from prunekit.core.masks import check_pattern_fits, parse_pattern
from prunekit.core.memory import lean_allocator, peak_device_mb, peak_rss_mb
from prunekit.core.stats import LayerStats, collect_gradients
from prunekit.oneshot.base import LayerContext
from prunekit.oneshot.wanda import wanda_scores
from prunekit.core.families import Adapter, adapter_for, as_out_in, weight_view
from prunekit.core.errors import PrunekitError
from prunekit.core.finite import check_finite, check_finite_stats
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
    peak_device_mb: float | None = None  # peak CUDA memory allocated so far (None: not run on a CUDA device)
    dtype: str = ""  # the dtype the blocks ran (and the weights are saved) in
    device: str = ""  # where the blocks ran
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
            + (f"; peak {self.device} memory {self.peak_device_mb:,.0f} MB" if self.peak_device_mb is not None else "")
            + (f"; {self.dtype} on {self.device}" if self.dtype else "")
        )
        return "\n".join(lines)


def as_recipe(recipe=None, **step_fields) -> Recipe:
    """Accept a Recipe, a PruneStep, a dict, a recipe file path, or plain step fields."""
    if recipe is None:
        return Recipe(steps=[PruneStep(**step_fields)])
    if step_fields:
        raise PrunekitError("pass either a recipe or step fields such as method=..., not both")
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
    recipe = _oneshot_recipe(as_recipe(recipe, **step_fields))
    lean_allocator()  # one malloc arena for the runner's threads (see memory.py)
    calib = recipe.calibration
    source = calib.source if calibration is None else calibration
    start = time.perf_counter()
    adapter = adapter_for(model)
    result = PruneResult(recipe=recipe.to_dict(), calibration=describe_source(source))
    _where(result, model, device)
    for step in recipe.steps:
        _run_step(adapter, step, calib, source, tokenizer, result, progress, device)
    return _finish(result, sum(p.numel() for p in model.parameters()), start)


def _where(result: PruneResult, model: nn.Module, device) -> None:
    """Record the dtype of the weights and the device the blocks run on (``device``, else the model's)."""
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    result.dtype = str(weight.dtype).removeprefix("torch.") if weight is not None else ""
    result.device = str(torch.device(device)) if device is not None else (
        str(weight.device) if weight is not None and not weight.is_meta else "cpu")


def _oneshot_recipe(recipe: Recipe) -> Recipe:
    other = next((s.name for s in recipe.steps if not isinstance(s, PruneStep)), None)
    if other is not None:
        raise PrunekitError(f"prunekit.prune runs oneshot steps, not {other!r} steps (structured: "
                            "prunekit.structured.recipe.apply_step; training: prunekit train; selection: prunekit data)")
    return recipe


def _finish(result: PruneResult, parameters: int, start: float) -> PruneResult:
    result.parameters = parameters
    result.targeted = sum(r.shape[0] * r.shape[1] for r in result.layers)
    result.zeros = int(sum(round(r.sparsity * r.shape[0] * r.shape[1]) for r in result.layers))
    result.seconds = time.perf_counter() - start
    result.peak_rss_mb = peak_rss_mb()
    result.peak_device_mb = peak_device_mb(result.device or None)
    return result


def manifest(recipe: Recipe, result: PruneResult) -> dict:
    """``prunekit.json`` of a one-shot output: the recipe that ran (so the file is itself a recipe) and
    its result (per-layer sparsity, timings)."""
    data = result.to_dict()
    return {
        **recipe.to_dict(),
        "result": {
            "calibration": data["calibration"],
            "timings": {**data["timings"], "total_s": data["seconds"]},
            "sparsity": data["sparsity"],
            "dtype": data["dtype"],
            "device": data["device"],
            "peak_rss_mb": data["peak_rss_mb"],
            "peak_device_mb": data["peak_device_mb"],
            "layers": {r["name"]: {"sparsity": r["sparsity"], "target": r["target"], "pattern": r["pattern"],
                                   "method": r["method"]} for r in data["layers"]},
        },
    }


# ------------------------------------------------------------------ streaming

def local_folder(model: str | Path) -> str | None:
    """The local folder of an embedded name, a folder or a hub id (from the Hugging Face cache, or
    downloaded: config, tokenizer and safetensors files only); None when there is none."""
    from prunekit.models.loading import resolve_model_path

    path = resolve_model_path(model)
    if Path(path).is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception:  # noqa: BLE001 - the in-memory loader reports why the name does not load
        return None


def stream_plan(recipe: Recipe, model: str | Path, stream: bool | None = None) -> tuple[str | None, str | None]:
    """(folder to stream from, None) or (None, why the whole model is loaded instead).

    ``stream=None`` (the CLI default) streams whenever it can; ``True`` makes every reason not to
    a one-line error; ``False`` never streams."""
    if stream is False:
        return None, None
    why = _why_in_memory(recipe)
    folder = None
    if why is None:
        folder = local_folder(model)
        why = _why_not_folder(folder, str(model))
    if why is not None and stream:
        raise PrunekitError(f"cannot stream {str(model)!r}: {why}; prune it in memory (prunekit prune --no-stream, "
                            "or prunekit.load_model + prunekit.prune)")
    return (None, why) if why else (folder, None)


def _why_in_memory(recipe: Recipe) -> str | None:
    if len(recipe.steps) != 1:
        return f"a recipe of {len(recipe.steps)} steps is pruned in memory"
    step = recipe.steps[0]
    if isinstance(step, PruneStep) and "gradients" in step.build().needs:
        return f"{step.method} needs gradients of the whole model"
    return None


def _why_not_folder(folder: str | None, shown: str) -> str | None:
    from prunekit.core.shards import NotStreamable, has_safetensors, open_streamed
    from prunekit.models.loading import load_config

    if folder is None:
        return "the model is not a local folder"
    if not has_safetensors(folder):
        return "the model has no safetensors weights (model.safetensors or its index)"
    try:  # headers and an empty model only: a missing or truncated shard is an error here
        open_streamed(folder, load_config(folder), shown=shown)
    except NotStreamable as err:
        return str(err)
    return None


@dataclass
class _Stream:
    """A streamed run: the input's weights, read into the empty model, and the output shards.
    ``plan[i]`` names the model tensors of output shard i: shard i holds block i, the shards after
    the blocks hold the rest (embeddings, final norm, head)."""

    weights: object  # core.shards.StreamedWeights
    writer: object  # core.shards.ShardWriter
    plan: list[list[str]]
    n_blocks: int

    def blocks(self, adapter: Adapter, write: bool) -> BlockWeights:
        from prunekit.core.shards import StreamedBlocks

        def write_block(index: int, module: nn.Module) -> None:
            self._write(index, ((name, self.weights.tensor(name)) for name in self.plan[index]))

        return StreamedBlocks(self.weights, adapter.block_prefix, on_block=write_block if write else None)

    def write_rest(self) -> None:
        for shard in range(self.n_blocks, len(self.plan)):
            self._write(shard, self.weights.read(self.plan[shard]))

    def _write(self, shard: int, tensors) -> None:
        self.writer.write(shard, {self.weights.saved_name(name): tensor for name, tensor in tensors})


def prune_pretrained(model: str | Path, out: str | Path, recipe=None, calibration=None, tokenizer=None,
                     progress: bool = True, device: torch.device | str | None = None, overwrite: bool = False,
                     dtype: torch.dtype | str = "auto", source: str | None = None, **step_fields) -> PruneResult:
    """Prune the model ``model`` (a folder, an embedded name or a hub id) into the folder ``out``,
    streaming: the model never is in memory as a whole (see the module docstring). The output holds
    the pruned weights in ``dtype`` (``"auto"``: the input's own; the blocks run in it too; sharded
    one block per file), the config, the tokenizer and
    ``prunekit.json``, written atomically (:func:`prunekit.core.io.atomic_output`), and loads with
    ``AutoModelForCausalLM.from_pretrained``. The masks are those :func:`prune` gives on the loaded
    model. ``source`` is the model as the manifest names it (default: ``model``).

    A recipe the streaming path cannot run (GBLM's gradients, several steps) or a model without
    a safetensors checkpoint is a :class:`PrunekitError` naming the in-memory path."""
    from prunekit.core.io import atomic_output, check_output, write_manifest
    from prunekit.core.memory import release_memory
    from prunekit.core.shards import ShardWriter, StreamedBlocks, open_streamed, pack
    from prunekit.models.loading import check_dtype, check_seqlen, load_config, load_tokenizer, resolve_dtype

    check_dtype(dtype)
    recipe = _oneshot_recipe(as_recipe(recipe, **step_fields))
    folder, _ = stream_plan(recipe, model, stream=True)
    shown = str(model)
    config = load_config(folder)
    dtype = resolve_dtype(dtype, config)
    data = recipe.calibration.source if calibration is None else calibration
    ready = isinstance(data, torch.Tensor) and data.dim() == 2  # ready-made windows: their own length
    if _needs_windows(recipe.steps[0], recipe.steps[0].build()):  # magnitude, random: no windows, no seqlen
        check_seqlen(config, data.shape[1] if ready else recipe.calibration.seqlen, "calibration seqlen")
    check_output(out, overwrite, inputs=(shown, folder))
    weights = open_streamed(folder, config, dtype, shown)  # a missing or truncated shard stops here
    skeleton = weights.model
    lean_allocator()
    calib = recipe.calibration
    start = time.perf_counter()
    adapter = adapter_for(skeleton)
    parameters = sum(p.numel() for p in skeleton.parameters())
    result = PruneResult(recipe=recipe.to_dict(), calibration=describe_source(data))
    _where(result, skeleton, device)
    step = recipe.steps[0]
    if _needs_windows(step, step.build()):  # the windows now: the tokenizer can go
        data = calibration_windows(data, tokenizer if tokenizer is not None else load_tokenizer(folder),
                                   calib.nsamples, calib.seqlen, calib.seed)
        release_memory()
    streamed = StreamedBlocks(weights, adapter.block_prefix)
    plan = [streamed.block_names(i) for i in range(len(adapter.blocks))]
    rest = [n for n in weights.sources if n not in {m for names in plan for m in names}]
    sizes = {n: weights.output_bytes(n) for n in weights.sources}
    plan += pack(rest, sizes, max(sum(sizes[n] for n in names) for names in plan))
    with atomic_output(out, overwrite, source=source or shown) as tmp:
        writer = ShardWriter(tmp, [[weights.saved_name(n) for n in names] for names in plan])
        stream = _Stream(weights, writer, plan, len(adapter.blocks))
        _run_step(adapter, step, calib, data, tokenizer, result, progress, device, stream)
        t0 = time.perf_counter()
        stream.write_rest()
        stream.writer.close()
        _save_config(skeleton, folder, tmp)
        (tokenizer if tokenizer is not None else load_tokenizer(folder)).save_pretrained(tmp)
        result.timings["stream:read_s"] = weights.read_s
        result.timings["stream:write_s"] = stream.writer.write_s
        result.timings["stream:rest_s"] = time.perf_counter() - t0
        _finish(result, parameters, start)
        write_manifest(tmp, manifest(recipe, result), source or shown)
    return result


def _save_config(model: nn.Module, folder: str, out: Path) -> None:
    """The model's config (naming its class and the saved dtype) and the input's generation config."""
    config = model.config
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    if (Path(folder) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        GenerationConfig.from_pretrained(folder).save_pretrained(out)


# ------------------------------------------------------------------ one step

def _target_layers(adapter: Adapter, step: PruneStep) -> list[dict[str, nn.Module]]:
    per_block = [select_layers(adapter.linears(i), step.targets, step.ignore) for i in range(len(adapter.blocks))]
    if not any(per_block):
        raise PrunekitError(f"targets {step.targets} minus ignore {step.ignore} match no layer in the model's blocks")
    return per_block


def _windows(adapter: Adapter, calib: CalibrationConfig, source, tokenizer) -> torch.Tensor:
    if tokenizer is None and not isinstance(source, torch.Tensor):
        from prunekit.models import load_tokenizer

        tokenizer = load_tokenizer(adapter.model.config._name_or_path)
    return calibration_windows(source, tokenizer, calib.nsamples, calib.seqlen, calib.seed)


def _needs_windows(step: PruneStep, method) -> bool:
    """Whether the step runs calibration windows: its method's statistics, or OWL's outlier scores."""
    return method.needs_calibration or step.allocation == "owl"


def _run_step(adapter, step, calib, source, tokenizer, result, progress, device=None, stream=None) -> None:
    """One step on ``adapter``'s model; with ``stream`` (a streamed run) the blocks are read, pruned and
    written one at a time."""
    method = step.build()
    pattern = parse_pattern(step.pattern)
    per_block = _target_layers(adapter, step)
    for layers in per_block:
        for name, module in layers.items():
            check_pattern_fits(pattern, weight_view(module).shape[1], name)
    windows = _windows(adapter, calib, source, tokenizer) if _needs_windows(step, method) else None
    compute = resolve_compute_dtype(calib.compute_dtype, next(adapter.model.parameters()).dtype,
                                    method.updates_weights)
    t0 = time.perf_counter()
    ratios = _allocate(adapter, step, per_block, windows, calib, progress, device, stream, compute)
    result.timings[f"{step.method}:allocation_s"] = time.perf_counter() - t0
    gradients = {}
    if "gradients" in method.needs:
        t0 = time.perf_counter()
        layers = {k: v for b in per_block for k, v in b.items()}
        gradients = collect_gradients(adapter.model, windows, layers, method.gradient_reduction, progress=progress)
        result.timings[f"{step.method}:gradients_s"] = time.perf_counter() - t0

    def prune_layer(name: str, module: nn.Module, stats: LayerStats | None) -> None:
        weight = weight_view(module)
        check_layer_inputs(name, weight, stats)  # the one per-layer place of both paths (in memory, streamed)
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
    weights = BlockWeights() if stream is None else stream.blocks(adapter, write=True)
    if method.needs_calibration:
        walk_blocks(adapter.model, adapter.blocks, windows, calib.chunk_size, per_block, prune_layer,
                    needs=method.needs, progress=progress, desc=f"{step.method}", device=device, weights=weights,
                    runner=calib.runner, compute_dtype=compute)
    else:
        for index, layers in enumerate(tqdm(per_block, desc=step.method, disable=not progress, leave=False)):
            with weights.block(index, adapter.blocks[index]):
                for name, module in layers.items():
                    prune_layer(name, module, None)
    result.timings[f"{step.method}:prune_s"] = time.perf_counter() - t0


def check_layer_inputs(name: str, weight: torch.Tensor, stats: LayerStats | None) -> None:
    """A target layer's weights and calibration statistics are finite before it is pruned: a NaN or inf
    among them makes every score of the layer meaningless (a chance-level mask, saved with exit 0)."""
    check_finite(weight, f"the weights of layer {name!r}", "prune a checkpoint whose weights are finite")
    check_finite_stats(stats, name)


# ------------------------------------------------------------------ allocation

def _allocate(adapter, step, per_block, windows, calib, progress, device=None, stream=None,
              compute=None) -> dict[str, float]:
    """Per-layer sparsities from the core allocation the step names (:mod:`prunekit.core.allocation`)."""
    modules = {name: m for layers in per_block for name, m in layers.items()}
    if step.allocation == "uniform":
        return ALLOCATIONS.build("uniform").ratios(modules, step.sparsity)
    if step.allocation == "global":  # one |W| threshold over all target layers
        allocation = ALLOCATIONS.build("global")
        if stream is None:
            return allocation.ratios({n: weight_view(m).abs() for n, m in modules.items()}, step.sparsity)

        def magnitudes():  # the dense weights, one layer at a time, as the in-memory path sees them
            for (name, module), (_, w) in zip(modules.items(), stream.weights.read(f"{n}.weight" for n in modules)):
                yield name, as_out_in(module, w).abs()

        sizes = {name: weight_view(m).numel() for name, m in modules.items()}
        counts = allocation.counts_streamed(magnitudes, sizes, step.sparsity)
        return {name: counts[name] / sizes[name] for name in modules}
    owl = ALLOCATIONS.build("owl", {"lam": step.owl_lambda, "m": step.owl_m})
    outliers = _owl_outliers(adapter, per_block, windows, calib, progress, device, owl, stream, compute)
    sizes = {i: sum(weight_view(m).numel() for m in layers.values()) for i, layers in enumerate(per_block)}
    block_ratio = owl.ratios_from_outliers(outliers, step.sparsity, sizes)
    return {name: block_ratio[i] for i, layers in enumerate(per_block) for name in layers}


def _owl_outliers(adapter, per_block, windows, calib, progress, device, owl, stream=None,
                  compute=None) -> dict[int, float]:
    """OWL's input: one dense pass collects the Wanda scores of each block, pooled (flat) per block
    and reduced to the block's outlier ratio as soon as the block is done."""
    block_of = {name: i for i, layers in enumerate(per_block) for name in layers}
    pending: dict[int, list[torch.Tensor]] = {}
    outliers: dict[int, float] = {}

    def reduce_done(before: int) -> None:
        for i in sorted(b for b in pending if b < before):
            outliers[i] = owl.outliers(torch.cat(pending.pop(i)))

    def collect(name, module, stats):
        reduce_done(block_of[name])
        pending.setdefault(block_of[name], []).append(wanda_scores(weight_view(module), stats).reshape(-1))

    weights = None if stream is None else stream.blocks(adapter, write=False)
    walk_blocks(adapter.model, adapter.blocks, windows, calib.chunk_size, per_block, collect, needs={"norms"},
                progress=progress, desc="owl scores", device=device, weights=weights, runner="dense",
                compute_dtype=compute)
    reduce_done(len(per_block))
    return outliers
