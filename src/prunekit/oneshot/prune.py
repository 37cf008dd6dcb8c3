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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from prunekit.core.allocation import LayerAllocation
from prunekit.core.calibration import BlockWeights, resolve_compute_dtype, walk_blocks
from prunekit.core.data_sources import calibration_windows, describe_source
from prunekit.core.errors import PrunekitError
from prunekit.core.families import Adapter, adapter_for, as_out_in, weight_view
from prunekit.core.finite import check_finite, check_finite_stats
from prunekit.core.layerwise import layer_generator, prune_layers, target_layers
from prunekit.core.masks import check_pattern_fits, parse_pattern
from prunekit.core.memory import peak_device_mb, peak_rss_mb
from prunekit.core.recipe import CalibrationConfig, Recipe, Step
from prunekit.core.registry import ALLOCATIONS, METHODS
from prunekit.core.stats import LayerStats, collect_gradients
from prunekit.oneshot.base import LayerContext


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


def run_step(step: Step, session) -> PruneResult:
    """``PruneStep.run``: one one-shot step on the session's model (in memory, or streamed while
    ``session.stream`` is set). The one-shot steps of a session share one :class:`PruneResult`."""
    result = session.result(PruneResult)
    if result is None:
        result = PruneResult(recipe=session.recipe.to_dict(), calibration=describe_source(session.calibration_input))
        _where(result, session.model, session.device)
    start = time.perf_counter()
    adapter = adapter_for(session.model)
    windows = session.windows() if _needs_windows(step, step.build()) else None
    _run_step(adapter, step, session.calibration, windows, None, result, session.progress,
              session.device, session.stream)
    result.seconds += time.perf_counter() - start
    return result


def _where(result: PruneResult, model: nn.Module, device) -> None:
    """Record the dtype of the weights and the device the blocks run on (``device``, else the model's)."""
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    result.dtype = str(weight.dtype).removeprefix("torch.") if weight is not None else ""
    result.device = str(torch.device(device)) if device is not None else (
        str(weight.device) if weight is not None and not weight.is_meta else "cpu")


def finish_result(result: PruneResult, parameters: int, start: float | None = None) -> PruneResult:
    """Totals of a finished run: every pruned tensor counted once, with its zeros at the end (a layer
    pruned by two steps counts with the second step's report, which sees the first step's zeros too)."""
    final = {r.name: r for r in result.layers}
    result.parameters = parameters
    result.targeted = sum(r.shape[0] * r.shape[1] for r in final.values())
    result.zeros = int(sum(round(r.sparsity * r.shape[0] * r.shape[1]) for r in final.values()))
    if start is not None:
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


@dataclass
class StreamPlan:
    """A checkpoint opened for a streamed run: its source (config and headers read once), the dtype the
    blocks run and are saved in, and the weights matched to the model built without them."""

    source: object  # core.session.ModelSource
    dtype: torch.dtype
    weights: object  # core.shards.StreamedWeights


def stream_plan(recipe: Recipe, model, stream: bool | None = None) -> tuple[str | None, str | None]:
    """(folder to stream from, None) or (None, why the whole model is loaded instead); see :func:`open_stream`."""
    from prunekit.core.session import ModelSource

    source = model if isinstance(model, ModelSource) else ModelSource(model)
    plan = open_stream(recipe, source, stream)
    return (None, getattr(source, "why_in_memory", None)) if plan is None else (plan.source.path, None)


def open_stream(recipe: Recipe, source, stream: bool | None = None, dtype="auto") -> StreamPlan | None:
    """The :class:`StreamPlan` of a streamed run of ``recipe`` on ``source`` (a
    :class:`~prunekit.core.session.ModelSource`), or None when it runs in memory (``stream=None``: stream
    whenever possible; ``True``: every reason not to is a one-line error; ``False``: never). Reads the
    config and the safetensors headers once, and checks the weights' dtypes from those headers."""
    from prunekit.models.loading import check_dtype

    if stream is False:
        return None
    check_dtype(dtype)
    why = why_in_memory(recipe)
    plan = None
    if why is None:
        opened = _open(source, None if dtype == "auto" else dtype)
        why, plan = (opened, None) if isinstance(opened, str) else (None, opened)
    if why is not None:
        if stream:
            raise PrunekitError(f"cannot stream {source.shown!r}: {why}; prune it in memory (prunekit prune "
                                "--no-stream, or prunekit.load_model + prunekit.prune)")
        source.why_in_memory = why
        return None
    return plan


def why_in_memory(recipe: Recipe) -> str | None:
    """Why a recipe cannot be streamed block by block (None: it can)."""
    if len(recipe.steps) != 1:
        return f"a recipe of {len(recipe.steps)} steps is pruned in memory"
    step = recipe.steps[0]
    if step.name != "oneshot":
        return f"a {step.name} step is run in memory"
    if "gradients" in step.build().needs:
        return f"{step.method} needs gradients of the whole model"
    return None


def _open(source, dtype) -> StreamPlan | str:
    """The opened checkpoint, or why it cannot be streamed."""
    from prunekit.core.shards import NotStreamable, StreamedWeights, empty_model
    from prunekit.models.loading import resolve_dtype

    folder = local_folder(source.path) if not Path(source.path).is_dir() else source.path
    if folder is None:
        return "the model is not a local folder"
    if folder != source.path:
        source.path = folder
    if source.checkpoint is None:
        return "the model has no safetensors weights (model.safetensors or its index)"
    source.check_weights()
    dtype = resolve_dtype("auto" if dtype is None else dtype, source.config)
    try:  # the model built without weights, every tensor matched to its checkpoint key
        weights = StreamedWeights(empty_model(source.config, dtype), source.checkpoint, dtype, source.shown)
    except NotStreamable as err:
        return str(err)
    return StreamPlan(source, dtype, weights)


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


def prune_streamed(plan: StreamPlan, out: str | Path, recipe: Recipe, dataset=None, tokenizer=None,
                   progress: bool = True, device: torch.device | str | None = None,
                   overwrite: bool = False) -> PruneResult:
    """Prune the checkpoint of ``plan`` (:func:`open_stream`) into the folder ``out``, streaming: the model
    never is in memory as a whole (see the module docstring). The output holds the pruned weights in
    the plan's dtype (the blocks run in it too; sharded one block per file), the config, the tokenizer
    and ``prunekit.json``, written atomically (:func:`prunekit.core.io.atomic_output`), and loads with
    ``AutoModelForCausalLM.from_pretrained``. The masks are those the in-memory path gives on the
    loaded model."""
    from prunekit.core.io import atomic_output, check_output, write_manifest
    from prunekit.core.memory import release_memory
    from prunekit.core.session import Session
    from prunekit.core.shards import ShardWriter, StreamedBlocks, pack

    source, weights, step = plan.source, plan.weights, recipe.steps[0]
    session = Session(recipe, weights.model, source, dataset, progress, device)
    if tokenizer is not None:
        session.tokenizer = tokenizer
    needs_windows = _needs_windows(step, step.build())
    check_output(out, overwrite, inputs=(source.shown, source.path))
    skeleton = weights.model
    start = time.perf_counter()
    adapter = adapter_for(skeleton)
    parameters = sum(p.numel() for p in skeleton.parameters())
    if needs_windows:  # the windows now, before the blocks hold memory
        session.windows()
        release_memory()
    streamed = StreamedBlocks(weights, adapter.block_prefix)
    shards = [streamed.block_names(i) for i in range(len(adapter.blocks))]
    rest = [n for n in weights.sources if n not in {m for names in shards for m in names}]
    sizes = {n: weights.output_bytes(n) for n in weights.sources}
    shards += pack(rest, sizes, max(sum(sizes[n] for n in names) for names in shards))
    with atomic_output(out, overwrite, source=source.path) as tmp:
        writer = ShardWriter(tmp, [[weights.saved_name(n) for n in names] for names in shards])
        session.stream = _Stream(weights, writer, shards, len(adapter.blocks))
        result = run_step(step, session)
        t0 = time.perf_counter()
        session.stream.write_rest()
        session.stream.writer.close()
        _save_config(skeleton, source.path, tmp)
        session.tokenizer.save_pretrained(tmp)
        result.timings["stream:read_s"] = weights.read_s
        result.timings["stream:write_s"] = session.stream.writer.write_s
        result.timings["stream:rest_s"] = time.perf_counter() - t0
        finish_result(result, parameters, start)
        write_manifest(tmp, manifest(recipe, result), source.path)
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

def _windows(adapter: Adapter, calib: CalibrationConfig, source, tokenizer) -> torch.Tensor:
    if tokenizer is None and not isinstance(source, torch.Tensor):
        from prunekit.models import load_tokenizer

        tokenizer = load_tokenizer(adapter.model.config._name_or_path)
    return calibration_windows(source, tokenizer, calib.nsamples, calib.seqlen, calib.seed)


def _needs_windows(step: Step, method) -> bool:
    """Whether the step runs calibration windows: its method's statistics, or its allocation's (OWL's
    outlier scores)."""
    return method.needs_calibration or ALLOCATIONS.get(step.allocation).needs_calibration


def _run_step(adapter, step, calib, source, tokenizer, result, progress, device=None, stream=None) -> None:
    """One step on ``adapter``'s model; with ``stream`` (a streamed run) the blocks are read, pruned and
    written one at a time."""
    method = step.build()
    pattern = parse_pattern(step.pattern)
    per_block = target_layers(adapter, step.targets, step.ignore)
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
        grad = gradients[name].weight if name in gradients else None
        ctx = LayerContext(name, stats, grad, layer_generator(step.seed, name))
        with torch.no_grad():
            mask = method.prune_layer(weight, ratios[name], pattern, ctx)
            weight[mask] = 0.0
        zeros = int((weight == 0).sum())
        result.layers.append(LayerReport(name, tuple(weight.shape), ratios[name], zeros / weight.numel(),
                                         str(pattern), step.method))

    t0 = time.perf_counter()
    prune_layers(adapter, per_block, prune_layer, needs=method.needs, windows=windows, chunk_size=calib.chunk_size,
                 runner=calib.runner, compute_dtype=compute, device=device, progress=progress, desc=step.method,
                 weights=BlockWeights() if stream is None else stream.blocks(adapter, write=True))
    result.timings[f"{step.method}:prune_s"] = time.perf_counter() - t0


def check_layer_inputs(name: str, weight: torch.Tensor, stats: LayerStats | None) -> None:
    """A target layer's weights and calibration statistics are finite before it is pruned: a NaN or inf
    among them makes every score of the layer meaningless (a chance-level mask, saved with exit 0)."""
    check_finite(weight, f"the weights of layer {name!r}", "prune a checkpoint whose weights are finite")
    check_finite_stats(stats, name)


# ------------------------------------------------------------------ allocation

ALLOCATION_OPTIONS = {"owl": {"lam": "owl_lambda", "m": "owl_m"}}  # allocation option -> PruneStep field


def _allocate(adapter, step, per_block, windows, calib, progress, device=None, stream=None,
              compute=None) -> dict[str, float]:
    """Per-layer sparsities from the core allocation the step names (:mod:`prunekit.core.allocation`):
    its :meth:`~prunekit.core.allocation.Allocation.layer_ratios` reads the weights (in memory, or
    ``stream``'s, one layer at a time) and the calibration windows through one context."""
    fields = ALLOCATION_OPTIONS.get(step.allocation, {})
    allocation = ALLOCATIONS.build(step.allocation, {key: getattr(step, f) for key, f in fields.items()})
    modules = {name: m for layers in per_block for name, m in layers.items()}

    def magnitudes():  # the dense weights as the in-memory path sees them (streamed: one layer at a time)
        if stream is None:
            yield from ((name, weight_view(m).abs()) for name, m in modules.items())
            return
        for (name, module), (_, w) in zip(modules.items(), stream.weights.read(f"{n}.weight" for n in modules)):
            yield name, as_out_in(module, w).abs()

    def dense_scores(scored_by: str, on_scores, desc: str) -> None:  # statistics of the dense model only
        scorer = METHODS.build(scored_by)

        def score(name, module, stats):
            on_scores(name, scorer.scores(weight_view(module), LayerContext(name, stats)))

        walk_blocks(adapter.model, adapter.blocks, windows, calib.chunk_size, per_block, score, needs=scorer.needs,
                    progress=progress, desc=desc, device=device,
                    weights=None if stream is None else stream.blocks(adapter, write=False), runner="dense",
                    compute_dtype=compute)

    ctx = LayerAllocation(per_block, step.sparsity, magnitudes, streamed=stream is not None,
                          dense_scores=None if windows is None else dense_scores)
    return allocation.layer_ratios(ctx)
