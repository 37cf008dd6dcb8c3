"""Filter pruning of generic CNNs through a channel dependency graph traced with ``torch.fx``.

Every tensor with channels carries a list of *segments* (channel space, size, spatial multiplier):

* a convolution (groups=1) or linear layer consumes its input spaces and starts a new space, its
  output channels ("producer");
* batch norm, activations, pooling and dropout pass the spaces through; a depthwise convolution
  (groups = in = out) too, sliced together with them;
* ``+``, ``*`` and ``-`` between two channel tensors tie their spaces (residual connections:
  everything summed must keep the same channels) - a union-find merges them;
* ``torch.cat`` along channels concatenates segments; ``flatten``/``view(n, -1)`` before a linear
  layer multiplies each channel into ``H*W`` columns.

A merged space is one prunable group when it has a producer and never reaches the model output, the
image input, or an operation the tracer does not understand (those spaces are left intact).

Each group is a :class:`~prunekit.structured.graph.Group` of kind ``filters`` (one unit per channel),
the same group type as the LLM's: it is scored by the structured criteria that declare the structure
``filters`` (``score(group, ctx)``: magnitude, l1, random), its kept widths are rounded by
:func:`~prunekit.structured.graph.kept_units` and it is sliced by
:func:`~prunekit.structured.shrink.remove_units`.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from prunekit.core.errors import PrunekitError
from prunekit.core.masks import top_k_indices
from prunekit.core.registry import CRITERIA
from prunekit.structured.criteria import ScoreContext, scoring
from prunekit.structured.graph import Group, Part, kept_units
from prunekit.structured.shrink import remove_units

PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
                nn.LeakyReLU, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
PASS_FUNCTIONS = {F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.sigmoid, torch.sigmoid, torch.relu, torch.tanh,
                  F.dropout, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, F.leaky_relu}
PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float"}
TIE_FUNCTIONS = {operator.add, operator.mul, operator.sub, torch.add, torch.mul, operator.iadd}


class Tracer(fx.Tracer):
    """Convolutions, linears and norms (also subclasses with padding children) and parameter-free
    modules are leaves; containers are traced through."""

    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)) or not list(m.children())


@dataclass
class Segment:
    space: int
    size: int
    mult: int = 1  # columns per channel after flatten


class _Graph:
    def __init__(self, model: nn.Module):
        self.model = model
        self.parent: list[int] = []
        self.sizes: list[int] = []
        self.blocked: set[int] = set()
        self.producers: dict[int, list[str]] = {}
        self.passengers: dict[int, list[str]] = {}
        self.consumers: dict[int, list[tuple[str, int, int]]] = {}

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.sizes.append(size)
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            if self.sizes[a] != self.sizes[b]:
                self.blocked.update((a, b))

    def block(self, segs) -> None:
        for seg in segs or []:
            self.blocked.add(seg.space)

    def consume(self, name: str, segs) -> None:
        offset = 0
        for seg in segs:
            self.consumers.setdefault(seg.space, []).append((name, offset, seg.mult))
            offset += seg.size


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes]


def _channels(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) >= 2 else None


def _spatial(node: fx.Node) -> int:
    shape = node.meta["tensor_meta"].shape
    return int(math.prod(shape[2:])) if len(shape) > 2 else 1


def build_graph(model: nn.Module, example: torch.Tensor) -> tuple[_Graph, fx.GraphModule]:
    gm = fx.GraphModule(model, Tracer().trace(model))
    ShapeProp(gm).propagate(example)
    g = _Graph(model)
    segs: dict[fx.Node, list[Segment] | None] = {}
    for node in gm.graph.nodes:
        segs[node] = _visit(g, node, segs, model)
    return g, gm


def _visit(g: _Graph, node: fx.Node, segs, model: nn.Module):
    ins = [segs.get(a) for a in _tensor_args(node)]
    first = ins[0] if ins else None
    if node.op == "placeholder":
        c = _channels(node)
        if c is None:
            return None
        s = g.new(c)
        g.blocked.add(s)
        return [Segment(s, c)]
    if node.op == "output":
        for s in ins:
            g.block(s)
        return None
    if node.op == "call_module":
        return _visit_module(g, node, model.get_submodule(node.target), first, ins)
    if node.op == "call_function" and node.target in TIE_FUNCTIONS:
        tensors = [s for s in ins if s is not None]
        if len(tensors) == 2 and len(tensors[0]) == len(tensors[1]) == 1:
            g.union(tensors[0][0].space, tensors[1][0].space)
            return tensors[0]
        if len(tensors) == 1:
            return tensors[0]
        for s in tensors:
            g.block(s)
        return None
    if node.op == "call_function" and node.target is torch.cat:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        parts = [segs.get(a) for a in node.args[0]]
        if dim == 1 and all(p is not None for p in parts):
            return [seg for p in parts for seg in p]
        for p in parts:
            g.block(p)
        return None
    if _is_flatten(node):
        return [Segment(s.space, s.size, s.mult * _spatial(node.all_input_nodes[0])) for s in first]
    if (node.op == "call_function" and node.target in PASS_FUNCTIONS) or (
            node.op == "call_method" and node.target in PASS_METHODS):
        return first
    if node.op == "call_method" and node.target in ("size", "dim") or node.op == "get_attr":
        return None
    for s in ins:
        g.block(s)
    return None


def _is_flatten(node: fx.Node) -> bool:
    flat_fn = node.op == "call_function" and node.target is torch.flatten
    flat_m = node.op == "call_method" and node.target == "flatten"
    view = node.op == "call_method" and node.target in ("view", "reshape") and len(node.args) == 3 and node.args[2] == -1
    meta = node.meta.get("tensor_meta")
    return (flat_fn or flat_m or view) and meta is not None and len(meta.shape) == 2


def _visit_module(g: _Graph, node: fx.Node, m: nn.Module, first, ins):
    if isinstance(m, nn.Flatten) and first is not None:
        if m.start_dim != 1:
            g.block(first)
            return None
        return [Segment(s.space, s.size, s.mult * _spatial(node.all_input_nodes[0])) for s in first]
    if isinstance(m, nn.Conv2d):
        if first is None:
            return None
        depthwise = m.groups == m.in_channels == m.out_channels and m.groups > 1
        if depthwise and len(first) == 1:
            g.passengers.setdefault(first[0].space, []).append(node.target)
            return first
        if m.groups != 1:
            g.block(first)
            s = g.new(m.out_channels)
            g.blocked.add(s)
            return [Segment(s, m.out_channels)]
        g.consume(node.target, first)
        s = g.new(m.out_channels)
        g.producers.setdefault(s, []).append(node.target)
        return [Segment(s, m.out_channels)]
    if isinstance(m, nn.Linear):
        if first is not None:
            g.consume(node.target, first)
        s = g.new(m.out_features)
        g.producers.setdefault(s, []).append(node.target)
        return [Segment(s, m.out_features)]
    if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        if first is not None and len(first) == 1:
            g.passengers.setdefault(first[0].space, []).append(node.target)
            return first
        g.block(first)
        return None
    if isinstance(m, PASS_MODULES) or not list(m.parameters()):
        return first
    for s in ins:
        g.block(s)
    return None


def find_cnn_groups(model: nn.Module, example: torch.Tensor) -> list[Group]:
    """Prunable channel groups of ``model`` (traced on ``example``), in order of first appearance: groups
    of kind ``filters`` whose unit c owns row c of every producer and passenger and, in every consumer,
    the ``mult`` input columns channel c became (``offset`` channels into its input). Filter groups
    score their kernels only (no biases, no norms) in float64."""
    g, _ = build_graph(model, example)
    members: dict[int, tuple[list, list, list]] = {}
    blocked = {g.find(s) for s in g.blocked}
    for s in range(len(g.parent)):
        producers, passengers, consumers = members.setdefault(g.find(s), ([], [], []))
        producers += g.producers.get(s, [])
        passengers += g.passengers.get(s, [])
        consumers += g.consumers.get(s, [])
    groups = []
    for r, (producers, passengers, consumers) in members.items():
        if r in blocked or not producers:
            continue
        rows = torch.arange(g.sizes[r])[:, None]
        groups.append(Group("filters", g.sizes[r], [_part(model, n, rows) for n in producers],
                            [_part(model, n, (offset + rows) * mult + torch.arange(mult)) for n, offset, mult in consumers],
                            [_part(model, n, rows) for n in passengers], bias_scored=False, score_dtype=torch.float64))
    return groups


def _part(model: nn.Module, name: str, index: torch.Tensor) -> Part:
    return Part(name, model.get_submodule(name), index)


def cnn_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of convolutions and linear layers for one forward of ``example``."""
    total = 0

    def hook(m, _inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        else:
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total


@dataclass
class CnnResult:
    widths: dict[str, int]  # kept channels per group, keyed by its first producer
    flops_before: int
    flops_after: int
    parameters_before: int
    parameters_after: int
    channel_ratio: float  # fraction of each group's channels removed (before rounding)
    batch_norms_corrected: int = 0  # prune_cnn(correct_bn=images): batch norms whose statistics were corrected

    @property
    def flops_removed(self) -> float:
        return 1.0 - self.flops_after / max(self.flops_before, 1)


def _kept(group: Group, ratio: float, round_to: int) -> int:
    return kept_units(group, group.n_units - round(ratio * group.n_units), round_to)


def _plan(groups, ratio, round_to, criterion, ctx) -> list[tuple[Group, torch.Tensor]]:
    return [(grp, top_k_indices(criterion.score(grp, ctx), _kept(grp, ratio, round_to))) for grp in groups]


def filter_criterion(method: str, options: dict | None = None):
    """The structured criterion ``method`` with checked ``options``, if it scores CNN filters."""
    criterion = CRITERIA.build(method, options)
    if "filters" not in criterion.structures:
        raise PrunekitError(f"method {method!r} does not score CNN filters (structure 'filters'); choose from "
                            f"{', '.join(scoring('filters'))}")
    return criterion


def prune_cnn(model: nn.Module, example: torch.Tensor, ratio: float | None = None, flops: float | None = None,
              method: str = "magnitude", round_to: int = 8, seed: int = 0, correct_bn: torch.Tensor | None = None,
              **options) -> CnnResult:
    """Remove the same fraction of channels from every prunable group of a CNN, in place.

    Give ``ratio`` (fraction of each group's channels) or ``flops`` (fraction of the FLOPs to remove;
    the channel ratio is found by bisection). Kept widths are multiples of ``round_to``. ``method``
    is a structured criterion that scores filters, ``options`` its options (e.g. ``p=1``).
    ``correct_bn``: images (a batch the model takes) on which the batch norms' statistics are then
    corrected for what the pruning shifted (:func:`correct_batch_norms`, against the model as it was).
    """
    import copy

    criterion = filter_criterion(method, options)
    if (ratio is None) == (flops is None):
        raise PrunekitError("give exactly one of ratio (channels) or flops (fraction of FLOPs removed)")
    target = ratio if ratio is not None else flops
    if not 0.0 <= target < 1.0:
        raise PrunekitError(f"{'ratio' if ratio is not None else 'flops'} {target} is outside [0, 1)")
    model.eval()
    groups = find_cnn_groups(model, example)
    if not groups:
        raise PrunekitError(f"{type(model).__name__} has no prunable channel groups (structure 'filters')")
    before = cnn_flops(model, example)
    params_before = sum(p.numel() for p in model.parameters())
    if flops is not None:
        ctx = ScoreContext(generator=torch.Generator().manual_seed(seed))
        lo, hi = 0.0, 0.95
        for _ in range(12):  # bisection on the channel ratio
            mid = (lo + hi) / 2
            trial = copy.deepcopy(model)
            remove_units(_plan(find_cnn_groups(trial, example), mid, round_to, criterion, ctx))
            lo, hi = (mid, hi) if 1 - cnn_flops(trial, example) / before < flops else (lo, mid)
        ratio = hi
    dense = copy.deepcopy(model) if correct_bn is not None else None
    ctx = ScoreContext(generator=torch.Generator().manual_seed(seed))
    remove_units(_plan(groups, ratio, round_to, criterion, ctx))
    corrected = correct_batch_norms(model, dense, correct_bn) if dense is not None else 0
    widths = {grp.producers[0].name: _kept(grp, ratio, round_to) for grp in groups}
    return CnnResult(widths, before, cnn_flops(model, example), params_before,
                     sum(p.numel() for p in model.parameters()), ratio, corrected)


# ------------------------------------------------------------------ batch-norm correction

BatchNorms = (nn.BatchNorm1d, nn.BatchNorm2d)


def batch_norm_inputs(model: nn.Module, images: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and (biased) variance of every batch norm's input on ``images`` (eval mode)."""
    stats = {}

    def keep(name):
        def hook(_module, inputs, _output):
            stats[name] = _channel_moments(inputs[0])
        return hook

    _forward_with(model, images, [m.register_forward_hook(keep(n)) for n, m in model.named_modules()
                                  if isinstance(m, BatchNorms)])
    return stats


def _channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (dim 1) mean and biased variance, in float64."""
    x = x.double()
    dims = [d for d in range(x.dim()) if d != 1]
    return x.mean(dims), x.var(dims, unbiased=False)


def _forward_with(model: nn.Module, images: torch.Tensor, handles: list) -> None:
    """One eval-mode forward of ``images`` with the hooks ``handles``, which are removed afterwards."""
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        for h in handles:
            h.remove()


def kept_channels(pruned: nn.Module, dense: nn.Module) -> torch.Tensor:
    """Which channels of the batch norm ``dense`` the sliced ``pruned`` kept, in order: the first match
    of its (running mean, running variance, weight, bias) rows as an ordered subsequence (rows that are
    identical are interchangeable, so the first match is as good as any). Works for any pruner that
    slices batch norms (prunekit's, Torch-Pruning's)."""
    def rows(m):
        cols = [m.running_mean, m.running_var, m.weight, m.bias]
        return list(zip(*(c.tolist() if c is not None else [None] * m.num_features for c in cols)))

    want, have = rows(pruned), rows(dense)
    kept, j = [], 0
    for i, row in enumerate(have):
        if j < len(want) and want[j] == row:
            kept.append(i)
            j += 1
    if j != len(want):
        raise PrunekitError("the pruned batch norm's rows are not a subsequence of the dense model's")
    return torch.tensor(kept, dtype=torch.long)


def correct_batch_norms(pruned: nn.Module, dense: nn.Module, images: torch.Tensor) -> int:
    """Correct, in place, the batch-norm statistics of a pruned CNN for the shift its pruning caused.

    Removing channels changes the inputs of later batch norms (their mean most of all: a removed
    channel's average contribution is gone), and their running statistics no longer normalise them.
    This measures the per-channel mean and variance of every batch norm's input on ``images`` in
    ``dense`` and, as the corrected ``pruned`` model runs (batch norms in execution order, each seeing
    its predecessors already corrected), in ``pruned``; its running mean becomes the dense one plus
    the difference of the means, its running variance the dense one times the ratio of the variances
    (1 for channels that do not vary on ``images``). The dense model's statistics, from its own
    training data, stay the reference: a few images estimate only the change, not the statistics
    themselves (re-estimating them outright from 16 photos costs EfficientNet-Lite0 most of its
    top-1 agreement with itself). Returns the number of batch norms corrected."""
    reference = batch_norm_inputs(dense, images)
    modules = dict(dense.named_modules())
    handles = []

    def correct(name, before, kept):
        def hook(module, inputs):
            mean, var = _channel_moments(inputs[0])
            mean_d, var_d = reference[name][0][kept], reference[name][1][kept]
            ratio = torch.where(var_d > 1e-12, var / var_d.clamp_min(1e-12), torch.ones_like(var_d))
            dtype = module.running_mean.dtype
            module.running_mean = (before.running_mean[kept].double() + mean - mean_d).to(dtype)
            module.running_var = (before.running_var[kept].double() * ratio).to(dtype)
        return hook

    for name, module in pruned.named_modules():
        if isinstance(module, BatchNorms) and name in modules:
            handles.append(module.register_forward_pre_hook(correct(name, modules[name],
                                                                    kept_channels(module, modules[name]))))
    _forward_with(pruned, images, handles)
    return len(handles)
