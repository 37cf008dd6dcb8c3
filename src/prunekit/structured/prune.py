"""``prune_structured``: score coupled groups, allocate a parameter budget, physically remove.

Flow: validate the request -> calibration statistics on the dense model (exactly what the criterion
declares it needs: channel moments and block similarity from one walk of the block runner,
:func:`prunekit.core.calibration.walk_blocks`; gradients from
:func:`prunekit.core.stats.collect_gradients`) -> per-unit scores for every MLP / attention group ->
kept units per group (uniform, global or per-block budget, rounded) -> bias compensation (FLAP) ->
slice the layers -> remove whole blocks (depth pruning) -> make the config describe the model, or
record its per-layer shapes in it (:func:`prunekit.core.shapes.describe_in_config`).

``widths="uniform"`` asks for a folder plain transformers loads: every block keeps the same widths
(the uniform allocation) and compensation biases go into the family's own bias parameters; what the
family cannot express that way is refused before any work (:func:`check_plain_widths`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from prunekit.core.calibration import walk_blocks
from prunekit.core.errors import PrunekitError, unknown_choice
from prunekit.core.families import SUPPORTED_FAMILIES, Adapter, Family, adapter_for, weight_view
from prunekit.core.registry import CRITERIA
from prunekit.core.shapes import bias_flag, describe_in_config
from prunekit.core.stats import ModelStats, collect_gradients
from prunekit.structured import allocate
from prunekit.structured.criteria import LLM_STRUCTURES, Criterion, ScoreContext
from prunekit.structured.criteria.block_importance import blocks_to_remove
from prunekit.structured.graph import KINDS, Group, blocks_group, find_groups
from prunekit.structured.shrink import add_to_bias, remove_units

STRUCTURES = LLM_STRUCTURES
WIDTHS = allocate.WIDTHS


@dataclass
class StructuredResult:
    method: str
    structure: tuple[str, ...]
    ratio: float
    allocation: str
    mlp_widths: list[int] = field(default_factory=list)  # per remaining block
    heads: list[int] = field(default_factory=list)  # query heads per remaining block
    kv_heads: list[int] = field(default_factory=list)
    removed_blocks: list[int] = field(default_factory=list)  # indices in the original model
    parameters_before: int = 0
    parameters_after: int = 0
    block_parameters_before: int = 0
    block_parameters_after: int = 0
    bias_compensation: bool = False
    widths: str = "per-layer"
    layer_shapes: dict = field(default_factory=dict)  # {} : the config describes the model (plain transformers)
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)

    @property
    def removed_fraction(self) -> float:
        """Fraction of the decoder blocks' parameters removed."""
        return 1.0 - self.block_parameters_after / max(self.block_parameters_before, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "removed_fraction": self.removed_fraction}

    def summary(self) -> str:
        widths = sorted(set(self.mlp_widths))
        heads = sorted(set(self.heads))
        return (f"{self.method} ({self.allocation}) on {','.join(self.structure)}: "
                f"{self.parameters_before:,} -> {self.parameters_after:,} parameters; decoder blocks "
                f"{self.removed_fraction:.1%} smaller; {len(self.mlp_widths)} blocks"
                f"{f' (removed {self.removed_blocks})' if self.removed_blocks else ''}; MLP widths {widths[0]}"
                f"..{widths[-1]}; heads {heads[0]}..{heads[-1]}; {self.seconds:.1f} s")


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def require_layout(family: Family) -> None:
    """Structured pruning needs the family's attention and MLP layout (the table's families)."""
    if not family.structured:
        raise PrunekitError(f"structured pruning needs the attention and MLP layout of the model, which prunekit knows "
                            f"for {', '.join(SUPPORTED_FAMILIES)}, not for {family.name}; one-shot pruning "
                            "(without --structure) works on it")


def check_request(adapter: Adapter, method: str, structure: tuple[str, ...], ratio: float | None,
                  remove: int | None, allocation: str | None) -> None:
    """One-line errors for requests that cannot be honoured."""
    require_layout(adapter.family)
    for s in structure:
        if s not in STRUCTURES:
            raise PrunekitError(f"structure {s!r} is not available for {adapter.family.name} models; "
                                f"choose from {', '.join(STRUCTURES)}")
    if not structure:
        raise PrunekitError(f"no structure given; choose from {', '.join(STRUCTURES)}")
    scored = CRITERIA.get(method).structures  # unknown criteria: did-you-mean
    for s in structure:
        if s not in scored:
            raise PrunekitError(f"structured criterion {method!r} does not score structure {s!r}; it scores "
                                f"{', '.join(x for x in STRUCTURES if x in scored)}")
    if structure == ("heads",) and all(adapter.attention_counts(i)[1] == 1 for i in range(len(adapter.blocks))):
        raise PrunekitError(f"{adapter.family.name} has one key/value head per block, so each attention is a single "
                            "unit, which its block keeps: heads cannot be removed alone; use --structure mlp,heads "
                            "(the MLP takes the budget) or blocks (whole blocks go, attention included)")
    channel = [s for s in structure if s != "blocks"]
    if channel and ratio is None:
        raise PrunekitError(f"structure {','.join(channel)} needs a ratio in [0, 1)")
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise PrunekitError(f"ratio {ratio} is outside [0, 1): it is the fraction of the structure's parameters "
                            "removed")
    if "blocks" in structure:
        n = len(adapter.blocks)
        k = remove if remove is not None else (round(ratio * n) if ratio is not None and not channel else None)
        if k is None:
            raise PrunekitError("structure blocks needs --remove N (or a ratio when blocks is the only structure)")
        if not 0 <= k < n:
            raise PrunekitError(f"remove {k} blocks is outside [0, {n - 1}]: the model has {n} blocks")
    if allocation is not None and allocation not in allocate.NAMES:
        raise unknown_choice("allocation", allocation, allocate.NAMES, where="structured pruning")


def check_plain_widths(model: nn.Module, structure: tuple[str, ...], allocation: str | None,
                       compensate: bool) -> None:
    """``widths="uniform"``: refuse (one line) what the stock class of the family cannot build from a config.

    ``model`` may be a skeleton on the meta device (the CLI checks before the weights load)."""
    adapter = adapter_for(model)
    family = adapter.family
    if family.attention is None or family.mlp is None:
        return  # a family structured pruning does not know: check_request says so
    if allocation not in (None, "uniform"):
        raise PrunekitError(f"widths uniform keeps every block at the same widths, but allocation {allocation!r} "
                            "gives each layer its own; drop the allocation (uniform is used) or use widths per-layer")
    if "heads" in structure and family.attention.head_dim_key is None:
        raise PrunekitError(f"widths uniform: {family.name} derives its head size from hidden / heads, so its config "
                            "cannot state fewer heads; prune mlp (and blocks) only, or keep per-layer widths "
                            "(loaded by prunekit.load_pretrained)")
    if not compensate:
        return
    consumers = {"mlp": f"{adapter.block_prefix}.0.{family.mlp.consumer}",
                 "heads": f"{adapter.block_prefix}.0.{family.attention.path}.{family.attention.out}"}
    for kind in (s for s in structure if s in consumers):
        name = consumers[kind]
        if model.get_submodule(name).bias is None and bias_flag(model, name) is None:
            layer = name.rsplit(".", 1)[-1]
            raise PrunekitError(f"widths uniform: {family.name} has no bias on {layer} and no config flag that adds "
                                "one, so bias compensation cannot be stored in a plain transformers folder; add "
                                "--option bias_compensation=false, or keep per-layer widths (prunekit.load_pretrained)")


def needed_statistics(criterion: Criterion, structure: tuple[str, ...], ratio: float | None,
                      compensate: bool) -> frozenset[str]:
    """Exactly the statistics this request reads: the criterion's for channel and head scores, the
    channel moments for bias compensation, the criterion's ``block_needs`` for depth pruning."""
    needs = set()
    if any(s != "blocks" for s in structure) and ratio:
        needs |= criterion.needs | ({"moments"} if compensate else set())
    if "blocks" in structure:
        needs |= criterion.block_needs
    return frozenset(needs)


def gather_statistics(adapter: Adapter, windows: torch.Tensor, needs: frozenset[str], progress: bool = False,
                      stats: ModelStats | None = None, chunk_size: int = 8,
                      gradient_reduction: str = "mean") -> ModelStats:
    """Collect what ``needs`` asks for on the (still dense) model; reuse what ``stats`` already has.

    Channel moments (of every group consumer's inputs) and block similarity come from one walk of
    the block runner that leaves the weights alone; gradients (weights and biases of every linear
    layer in the blocks) from :func:`collect_gradients`."""
    stats = stats or ModelStats()
    todo = stats.missing(needs)
    if todo & {"moments", "similarity"}:
        consumers = [{} for _ in adapter.blocks]  # the layers whose inputs are measured, per block
        for g in find_groups(adapter, KINDS) if "moments" in todo else ():
            consumers[g.block][g.consumer.name] = g.consumer.module

        def keep(name, _module, layer_stats):
            stats.layers[name] = layer_stats

        walk_needs = todo & {"moments", "similarity"}
        similarity = walk_blocks(adapter.model, adapter.blocks, windows, chunk_size, consumers, keep,
                                 needs=walk_needs, progress=progress, desc="statistics", runner="dense")
        if "similarity" in walk_needs:
            stats.block_similarity = similarity
        stats.collected |= walk_needs
        stats.windows = len(windows)
    if "gradients" in todo:
        layers = {name: m for i in range(len(adapter.blocks)) for name, m in adapter.linears(i).items()}
        stats.gradients = collect_gradients(adapter.model, windows, layers, gradient_reduction, biases=True,
                                            progress=progress)
        stats.collected.add("gradients")
    return stats


def compensate_bias(group: Group, keep: torch.Tensor, stats: ModelStats) -> None:
    """FLAP eq. 6: fold the mean contribution of the removed input channels into the output bias."""
    name, module, cols = group.consumer
    removed = torch.ones(group.n_units, dtype=torch.bool)
    removed[keep] = False
    if not removed.any():
        return
    idx = cols[removed].reshape(-1)
    mean = stats.layers[name].mean[idx].to(weight_view(module).dtype)
    add_to_bias(module, weight_view(module)[:, idx] @ mean)


def remove_blocks(adapter: Adapter, indices: list[int]) -> None:
    """Delete whole blocks, renumber the attention layer indices (KV cache slots) and the config."""
    blocks = adapter.blocks
    keep = [b for i, b in enumerate(blocks) if i not in set(indices)]
    parent_name, _, child = adapter.block_prefix.rpartition(".")
    setattr(adapter.model.get_submodule(parent_name), child, nn.ModuleList(keep))
    for i, block in enumerate(adapter.blocks):
        attn = adapter.family.attention_module(block)
        if hasattr(attn, "layer_idx"):
            attn.layer_idx = i
        if hasattr(block, "layer_idx"):
            block.layer_idx = i
    cfg = adapter.family.widths_config(adapter.model.config)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in set(indices)]
    cfg.num_hidden_layers = len(keep)


def _calibration_windows(adapter, calibration, tokenizer, nsamples, seqlen, seed) -> torch.Tensor:
    from prunekit.core.data_sources import calibration_windows

    if isinstance(calibration, torch.Tensor):
        return calibration_windows(calibration, None, nsamples, min(seqlen, calibration.shape[1]), seed)
    if tokenizer is None:
        from prunekit.models import load_tokenizer

        tokenizer = load_tokenizer(adapter.model.config._name_or_path)
    return calibration_windows(calibration, tokenizer, nsamples, seqlen, seed)


def prune_structured(model: nn.Module, method: str = "flap", structure: tuple[str, ...] | str = ("mlp", "heads"),
                     ratio: float | None = 0.2, remove: int | None = None, calibration="brown", tokenizer=None,
                     nsamples: int = 64, seqlen: int = 512, seed: int = 0, allocation: str | None = None,
                     round_to: int = 8, floor: float = 0.05, bias_compensation: bool | None = None,
                     statistics: ModelStats | None = None, progress: bool = False, chunk_size: int = 8,
                     widths: str = "per-layer", **options) -> StructuredResult:
    """Physically remove MLP channels, attention heads (whole kv groups) and/or blocks of ``model`` in place.

    ``ratio`` is the fraction of the chosen structures' parameters removed (for ``blocks`` alone:
    of the blocks); ``remove`` is a number of blocks. ``statistics`` may pass calibration statistics
    collected earlier on the same dense model (a :class:`~prunekit.core.stats.ModelStats`, see
    :func:`gather_statistics`); ``chunk_size`` windows run through a block together. ``widths``
    ``"uniform"`` keeps every block at the same widths and makes sure plain ``from_pretrained``
    loads the saved folder (else a one-line error before any work); ``"per-layer"`` lets the
    allocation choose each layer's width.
    """
    start = time.perf_counter()
    structure = tuple(s.strip() for s in structure.split(",")) if isinstance(structure, str) else tuple(structure)
    adapter = adapter_for(model)
    check_request(adapter, method, structure, ratio, remove, allocation)
    criterion = CRITERIA.build(method, options)
    compensate = criterion.bias_compensation if bias_compensation is None else bias_compensation
    if widths not in WIDTHS:
        raise unknown_choice("widths", widths, WIDTHS, where="structured pruning")
    if widths == "uniform":
        check_plain_widths(model, structure, allocation, compensate)
        allocation = "uniform"
    allocation = allocation or criterion.allocation
    blocks_before = count(adapter.blocks)
    result = StructuredResult(method, structure, ratio or 0.0, allocation, parameters_before=count(model),
                              block_parameters_before=blocks_before, bias_compensation=compensate, widths=widths)
    needs = needed_statistics(criterion, structure, ratio, compensate)
    stats = statistics or ModelStats()
    if stats.missing(needs):
        t0 = time.perf_counter()
        windows = _calibration_windows(adapter, calibration, tokenizer, nsamples, seqlen, seed)
        stats = gather_statistics(adapter, windows, needs, progress, stats, chunk_size, criterion.gradient_reduction)
        result.timings["statistics_s"] = time.perf_counter() - t0
    generator = torch.Generator().manual_seed(seed)
    channel_kinds = tuple(s for s in structure if s != "blocks")
    if channel_kinds and ratio:
        t0 = time.perf_counter()
        _prune_channels(adapter, criterion, channel_kinds, ratio, allocation, round_to, floor, compensate,
                        ScoreContext(stats, generator))
        result.timings["channels_s"] = time.perf_counter() - t0
    if "blocks" in structure:
        n = remove if remove is not None else round(ratio * len(adapter.blocks))
        ctx = ScoreContext(stats, generator)
        result.removed_blocks = blocks_to_remove(criterion.score(blocks_group(adapter), ctx), n)
        remove_blocks(adapter, result.removed_blocks)
    result.layer_shapes = describe_in_config(model)
    if widths == "uniform" and result.layer_shapes:
        raise RuntimeError(f"widths uniform left layers the config does not describe: {result.layer_shapes}")
    _describe(adapter, result)
    result.parameters_after = count(model)
    result.block_parameters_after = count(adapter.blocks)
    result.seconds = time.perf_counter() - start
    return result


def _prune_channels(adapter, criterion, kinds, ratio, allocation, round_to, floor, compensate, ctx) -> None:
    groups = find_groups(adapter, kinds)
    scores = [criterion.score(g, ctx) for g in groups]
    if allocation == "uniform":
        keeps = allocate.uniform(groups, scores, ratio, round_to)
    elif allocation == "global":
        keeps = allocate.global_(groups, scores, ratio, criterion.standardize, floor, round_to)
    else:
        costs = [sum(g.n_units * g.unit_cost for g in groups if g.block == b) for b in range(len(adapter.blocks))]
        ratios = criterion.block_ratios(ctx.stats, ratio, costs)
        keeps = allocate.per_block(groups, scores, dict(enumerate(ratios)), criterion.standardize, floor, round_to)
    if compensate:
        with torch.no_grad():
            for g, keep in zip(groups, keeps):
                compensate_bias(g, keep, ctx.stats)
    remove_units(list(zip(groups, keeps)), adapter.family)


def _describe(adapter: Adapter, result: StructuredResult) -> None:
    for i in range(len(adapter.blocks)):
        result.mlp_widths.append(adapter.mlp_width(i))
        n_q, n_kv, _ = adapter.attention_counts(i)
        result.heads.append(n_q)
        result.kv_heads.append(n_kv)
