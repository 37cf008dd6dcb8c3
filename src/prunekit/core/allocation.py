"""How a target sparsity is spread over layers (or over groups of structured units).

Every allocation answers one question: given the scores of each layer (lower = pruned first) and a
target sparsity, how many entries of each layer are pruned? The entries themselves are then the
lowest ones of their layer (:func:`~prunekit.core.masks.lowest_k`), so :meth:`Allocation.masks`
is shared by all of them. One-shot pruning asks for per-layer ratios (``api._allocate``), training
for masks (``training/criteria.py``), structured pruning for unit counts under a parameter budget
(``structured/allocate.py``).

* ``uniform``: every layer at the target sparsity.
* ``global``: one threshold over all layers' scores (Han et al. 2015; Frankle & Carbin 2019): the
  ``round(sparsity x total)`` lowest of all scores together are pruned. The count is exact: ties at
  the threshold go to the layers in the order given, then by index. ``floor`` keeps at least that
  fraction of every layer (its own best entries), so a layer of small weights is not emptied.
  With ``costs`` (parameters removed with one entry, e.g. a structured unit), entries are removed
  in ascending order until ``sparsity`` of the total cost is gone.
* ``owl``: Outlier Weighed Layerwise sparsity (Yin et al. 2024): layers with more outliers keep more.
* ``blocks``: ``global`` within each block, against that block's own sparsity (per-block budgets,
  e.g. CFSP's coarse step).

The allocations are registered in :data:`prunekit.core.registry.ALLOCATIONS`; callers check the
sparsity before asking. An allocation a one-shot step may name spreads its sparsity over the target
layers of a model's blocks with :meth:`Allocation.layer_ratios`, which reads what it needs from one
:class:`LayerAllocation` (the driver's way to the weights, in memory or streamed, and to the
calibration pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.families import weight_view
from prunekit.core.masks import lowest_k, n_pruned
from prunekit.core.registry import ALLOCATIONS, option

Scores = Mapping[Hashable, torch.Tensor]


# ------------------------------------------------------------------ counting the lowest entries

def _lowest_entries(scores: torch.Tensor, cap: int | None) -> torch.Tensor:
    """The ``cap`` lowest entries of a layer in index order (flat), or the layer as it is (no copy)
    when ``cap`` is None or covers it."""
    if cap is None or cap >= scores.numel():
        return scores
    flat = scores.reshape(-1)
    return flat[lowest_k(flat, cap)]


def lowest_counts(scores: Scores, k: int, caps: Mapping[Hashable, int] | None = None) -> dict[Hashable, int]:
    """How many entries of each layer are among the ``k`` lowest of all layers' scores together.

    A layer gives at most ``caps[name]`` entries (its lowest ones). Ties at the threshold go to the
    layers in the order given, then by index, so the counts add up to exactly ``k`` and
    ``lowest_k(layer, count)`` of every layer picks the entries ``lowest_k`` would pick over the
    concatenation of all layers (capped). One ``kthvalue``, no sort: fine for a whole LLM."""
    pieces = {name: _lowest_entries(s, None if caps is None else caps[name]) for name, s in scores.items()}
    available = sum(p.numel() for p in pieces.values())
    if k > available:
        raise PrunekitError(f"cannot prune {k} entries: only {available} may be pruned")
    if k <= 0:
        return {name: 0 for name in scores}
    flat = torch.cat([p.reshape(-1).float() for p in pieces.values()])
    threshold = torch.kthvalue(flat, k).values
    del flat
    below = {name: int((p < threshold).sum()) for name, p in pieces.items()}
    ties_left = k - sum(below.values())
    counts = {}
    for name, p in pieces.items():
        take = min(int((p == threshold).sum()), ties_left)
        ties_left -= take
        counts[name] = below[name] + take
    return counts


def _order_keys(values: torch.Tensor) -> torch.Tensor:
    """int32 keys of float32 ``values`` in the same order as the values (the bits of a non-negative
    float read as an integer grow with it; a negative one's lower 31 bits are flipped)."""
    bits = values.view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _key_value(key: int) -> torch.Tensor:
    """The float32 whose :func:`_order_keys` key is ``key``."""
    bits = torch.tensor([key if key >= 0 else key ^ 0x7FFFFFFF], dtype=torch.int32)
    return bits.view(torch.float32)[0]


def _kth_bin(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """(bin holding the k-th smallest entry, entries in the bins before it)."""
    cum = hist.cumsum(0)
    b = int(torch.searchsorted(cum, torch.tensor(k, dtype=cum.dtype)))
    return b, int(cum[b - 1]) if b else 0


def lowest_counts_streamed(layers: Callable[[], Iterable[tuple[Hashable, torch.Tensor]]], k: int,
                           caps: Mapping[Hashable, int] | None = None) -> dict[Hashable, int]:
    """:func:`lowest_counts` for layers read one at a time: ``layers()`` yields ``(name, scores)`` in a
    fixed order and is called three times; memory is one layer plus two 65,536-bin histograms.

    The k-th lowest score is found exactly from the order-preserving int32 keys of the float32
    scores: a histogram of their upper 16 bits finds its bin, a histogram of the lower 16 bits of
    the entries in that bin finds the key. The counts are then those of :func:`lowest_counts` (all
    entries below the threshold, ties to the layers in the order given), so the masks are identical."""

    def pieces():
        for name, s in layers():
            yield name, _lowest_entries(s, None if caps is None else caps[name]).reshape(-1).float()

    bins = 1 << 16
    upper = torch.zeros(bins, dtype=torch.int64)
    available = 0
    for _, p in pieces():
        upper += torch.bincount((_order_keys(p) >> 16) + (bins >> 1), minlength=bins)
        available += p.numel()
    if k > available:
        raise PrunekitError(f"cannot prune {k} entries: only {available} may be pruned")
    if k <= 0:
        return {name: 0 for name, _ in layers()}
    high, before = _kth_bin(upper, k)
    lower = torch.zeros(bins, dtype=torch.int64)
    for _, p in pieces():
        keys = _order_keys(p)
        lower += torch.bincount(keys[(keys >> 16) + (bins >> 1) == high] & 0xFFFF, minlength=bins)
    low, _ = _kth_bin(lower, k - before)
    threshold = _key_value(((high - (bins >> 1)) << 16) | low)
    counts, ties_left = {}, k
    tied = {}
    for name, p in pieces():
        counts[name] = int((p < threshold).sum())
        tied[name] = int((p == threshold).sum())
        ties_left -= counts[name]
    for name in counts:
        take = min(tied[name], ties_left)
        ties_left -= take
        counts[name] += take
    return counts


def budget_counts(scores: Scores, costs: Mapping[Hashable, float], budget: float,
                  caps: Mapping[Hashable, int] | None = None) -> dict[Hashable, int]:
    """How many entries of each layer are removed when entries go in ascending score order (all
    layers together, ties by layer order then index) while less than ``budget`` has been removed.

    Removing an entry of layer ``name`` removes ``costs[name]``; the last entry may overshoot the
    budget. A layer gives at most ``caps[name]`` entries (its lowest ones)."""
    names = list(scores)
    pieces = [_lowest_entries(scores[n], None if caps is None else caps[n]).reshape(-1).double().cpu() for n in names]
    if not any(p.numel() for p in pieces):
        return {n: 0 for n in names}
    owner = torch.cat([torch.full((p.numel(),), i) for i, p in enumerate(pieces)])
    order = torch.argsort(torch.cat(pieces), stable=True)
    cost = torch.tensor([float(costs[n]) for n in names], dtype=torch.float64)[owner[order]]
    spent_before = torch.cat([cost.new_zeros(1), cost.cumsum(0)[:-1]])
    removed = int((spent_before < budget).sum())
    counts = torch.bincount(owner[order[:removed]], minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts)}


# ------------------------------------------------------------------ OWL

OWL_MAX = 0.99  # OWL prunes at most this fraction of a unit: every block keeps 1% of its weights


def owl_ratios(outlier_ratios: Sequence[float], sparsity: float, lam: float = 0.08,
               sizes: Sequence[float] | None = None) -> list[float]:
    """OWL (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity"): layers with more outliers keep more.

    Outlier ratios D_l are mapped linearly onto [s - lam, s + lam] (high D -> low sparsity) and
    shifted so their mean, weighted by ``sizes`` (each unit's parameters; default: equal), is exactly
    the target ``sparsity``. Where that band leaves [0, OWL_MAX] (sparsity 0.95 with lam 0.08) the
    ratios are clipped and the shift is found again by bisection, so the clipped ratios still have the
    target mean: units at the edge stay clipped, the others move by the same amount. A sparsity above
    OWL_MAX is an error (no unit may be pruned beyond it).
    """
    check_owl_sparsity(sparsity)
    d = torch.tensor(outlier_ratios, dtype=torch.float64)
    spread = d.max() - d.min()
    if spread <= 0:
        return [sparsity] * len(outlier_ratios)
    weights = None if sizes is None else torch.tensor(sizes, dtype=torch.float64)
    scaled = (d - d.min()) / spread * (2 * lam)  # in [0, 2 lam]
    ratios = sparsity + lam - scaled
    ratios = ratios - _weighted_mean(ratios, weights) + sparsity
    if ratios.min() < 0.0 or ratios.max() > OWL_MAX:
        ratios = (ratios + _clipped_shift(ratios, weights, sparsity)).clamp(0.0, OWL_MAX)
    return [float(r) for r in ratios]


def check_owl_sparsity(sparsity: float) -> float:
    """OWL reaches any sparsity up to OWL_MAX; above it, a one-line error (checked when a recipe is read)."""
    if sparsity > OWL_MAX:
        raise PrunekitError(f"allocation owl prunes at most {OWL_MAX:g} of every block, so it cannot reach sparsity "
                            f"{sparsity:g}; use allocation uniform or global for it")
    return sparsity


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return values.mean() if weights is None else (values * weights).sum() / weights.sum()


def _clipped_shift(ratios: torch.Tensor, weights: torch.Tensor | None, target: float) -> float:
    """The shift t with mean(clamp(ratios + t, 0, OWL_MAX)) = target, by bisection: that mean grows
    with t, from 0 (every ratio clipped at 0) to OWL_MAX (every ratio clipped at OWL_MAX)."""
    lo, hi = -float(ratios.max()), OWL_MAX - float(ratios.min())
    for _ in range(200):  # float64: the interval stops shrinking long before
        mid = (lo + hi) / 2
        if _weighted_mean((ratios + mid).clamp(0.0, OWL_MAX), weights) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def outlier_ratio(scores: torch.Tensor, m: float = 5.0) -> float:
    """Fraction of entries larger than ``m`` times the mean score (OWL's layer outlier distribution)."""
    return float((scores > m * scores.mean()).float().mean())


# ------------------------------------------------------------------ the registered allocations

OnScores = Callable[[str, torch.Tensor], None]


@dataclass
class LayerAllocation:
    """What an allocation may read to spread one step's sparsity over the target layers of a model's blocks.

    The driver (one-shot pruning, in memory or streamed) provides the ways in: ``magnitudes()``
    yields ``(name, |W|)`` (out x in, the dense weights) of every target layer in order, one at a
    time when ``streamed`` (then it reads them from disk on every call); ``dense_scores(method,
    on_scores, desc)`` runs the calibration windows once through the dense blocks and calls
    ``on_scores(name, scores)`` with the registered one-shot ``method``'s scores of each target layer
    as soon as its statistics are complete (None when the step has no calibration windows)."""

    per_block: list[dict[str, nn.Module]]
    sparsity: float
    magnitudes: Callable[[], Iterable[tuple[str, torch.Tensor]]]
    streamed: bool = False
    dense_scores: Callable[[str, OnScores, str], None] | None = None

    @property
    def layers(self) -> dict[str, nn.Module]:
        """Every target layer, block by block."""
        return {name: module for layers in self.per_block for name, module in layers.items()}

    def sizes(self) -> dict[str, int]:
        """Weights of every target layer."""
        return {name: weight_view(module).numel() for name, module in self.layers.items()}


class Allocation:
    """Spreads a target sparsity over layers. A subclass defines :meth:`ratios` or :meth:`counts`, and
    :meth:`layer_ratios` when a one-shot step may name it (``needs_calibration``: it reads the
    calibration windows)."""

    needs_calibration: ClassVar[bool] = False

    def layer_ratios(self, ctx: LayerAllocation) -> dict[str, float]:
        """The sparsity of every target layer of a one-shot step (see :class:`LayerAllocation`)."""
        raise PrunekitError(f"allocation {self.name!r} does not spread a one-shot step's sparsity over layers; "
                            "use uniform, global or owl")

    def ratios(self, scores: Scores, sparsity: float, **context) -> dict[Hashable, float]:
        """Per-layer sparsity (pruned fraction of each layer)."""
        counts = self.counts(scores, sparsity, **context)
        return {name: counts[name] / s.numel() for name, s in scores.items()}

    def counts(self, scores: Scores, sparsity: float, **context) -> dict[Hashable, int]:
        """Per-layer number of pruned entries."""
        ratios = self.ratios(scores, sparsity, **context)
        return {name: n_pruned(s.numel(), ratios[name]) for name, s in scores.items()}

    def masks(self, scores: Scores, sparsity: float, **context) -> dict[Hashable, torch.Tensor]:
        """Per-layer masks shaped like the scores, ``True`` = pruned: the lowest ``counts`` of each layer."""
        counts = self.counts(scores, sparsity, **context)
        return {name: lowest_k(s.reshape(-1), counts[name]).reshape(s.shape) for name, s in scores.items()}


@ALLOCATIONS.register("uniform")
@dataclass
class Uniform(Allocation):
    """Every layer is pruned to the target sparsity."""

    def ratios(self, scores: Scores, sparsity: float, **context) -> dict[Hashable, float]:
        return {name: sparsity for name in scores}

    def layer_ratios(self, ctx: LayerAllocation) -> dict[str, float]:
        return self.ratios(ctx.layers, ctx.sparsity)


@ALLOCATIONS.register("global")
@dataclass
class Global(Allocation):
    """One threshold over all layers' scores: the lowest entries are pruned wherever they are."""

    floor: float = option(0.0, "fraction of every layer that is kept (its own best entries)", min=0, max=1)

    def layer_ratios(self, ctx: LayerAllocation) -> dict[str, float]:
        """One |W| threshold over all target layers: from the weights in memory, or read one layer at a
        time (:meth:`counts_streamed`, the same counts)."""
        if not ctx.streamed:
            return self.ratios(dict(ctx.magnitudes()), ctx.sparsity)
        sizes = ctx.sizes()
        counts = self.counts_streamed(ctx.magnitudes, sizes, ctx.sparsity)
        return {name: counts[name] / sizes[name] for name in sizes}

    def counts(self, scores: Scores, sparsity: float, *, costs: Mapping[Hashable, float] | None = None,
               min_kept: Mapping[Hashable, int] | None = None, **context) -> dict[Hashable, int]:
        """Pruned entries per layer. ``costs``: parameters per entry of each layer (the budget is then
        ``sparsity`` of the total cost); ``min_kept``: entries each layer keeps besides the floor."""
        sizes = {name: s.numel() for name, s in scores.items()}
        caps = self._caps(sizes, min_kept)
        if costs is not None:
            budget = sparsity * sum(s.numel() * costs[name] for name, s in scores.items())
            return budget_counts(scores, costs, budget, caps)
        return lowest_counts(scores, self._k(sizes, caps, sparsity), caps)

    def counts_streamed(self, layers: Callable[[], Iterable[tuple[Hashable, torch.Tensor]]],
                        sizes: Mapping[Hashable, int], sparsity: float) -> dict[Hashable, int]:
        """:meth:`counts` (without costs) for layers read one at a time (``sizes``: entries of each
        layer; ``layers()`` yields ``(name, scores)`` in that order, see :func:`lowest_counts_streamed`)."""
        caps = self._caps(sizes)
        return lowest_counts_streamed(layers, self._k(sizes, caps, sparsity), caps)

    def _caps(self, sizes: Mapping[Hashable, int], min_kept: Mapping[Hashable, int] | None = None) -> dict:
        """Entries each layer may give: all but the floor (and ``min_kept``)."""
        caps = {}
        for name, numel in sizes.items():
            least = max(math.ceil(self.floor * numel), (min_kept or {}).get(name, 0))
            caps[name] = numel - min(least, numel)
        return caps

    def _k(self, sizes: Mapping[Hashable, int], caps: Mapping[Hashable, int], sparsity: float) -> int:
        """Entries pruned in all: ``sparsity`` of the total, if the floor leaves that many."""
        total = sum(sizes.values())
        k = n_pruned(total, sparsity)
        if sum(caps.values()) < k:
            raise PrunekitError(
                f"floor {self.floor!r} keeps {total - sum(caps.values())} weights but sparsity {sparsity!r} keeps "
                f"only {total - k}; lower the floor or the sparsity")
        return k


@ALLOCATIONS.register("owl")
@dataclass
class Owl(Allocation):
    """Outlier-weighted (Yin et al. 2024): layers with more outlier scores are pruned less."""

    lam: float = option(0.08, "per-layer sparsities span [s - lam, s + lam]", min=0, below=1)
    m: float = option(5.0, "an outlier is a score above m x the mean score of its layer", above=0)

    needs_calibration = True
    scored_by: ClassVar[str] = "wanda"  # the one-shot method whose scores of the dense model count outliers

    def layer_ratios(self, ctx: LayerAllocation) -> dict[str, float]:
        """One sparsity per block: one dense pass scores every target layer (``scored_by``), each block's
        scores pooled (flat) and reduced to its outlier ratio as soon as the block is done."""
        if ctx.dense_scores is None:
            raise PrunekitError("allocation owl reads calibration data; give the step calibration windows")
        block_of = {name: i for i, layers in enumerate(ctx.per_block) for name in layers}
        pending: dict[int, list[torch.Tensor]] = {}
        outliers: dict[int, float] = {}

        def reduce_done(before: int) -> None:
            for i in sorted(b for b in pending if b < before):
                outliers[i] = self.outliers(torch.cat(pending.pop(i)))

        def collect(name: str, scores: torch.Tensor) -> None:
            reduce_done(block_of[name])
            pending.setdefault(block_of[name], []).append(scores.reshape(-1))

        ctx.dense_scores(self.scored_by, collect, "owl scores")
        reduce_done(len(ctx.per_block))
        sizes = {i: sum(weight_view(m).numel() for m in layers.values()) for i, layers in enumerate(ctx.per_block)}
        block_ratio = self.ratios_from_outliers(outliers, ctx.sparsity, sizes)
        return {name: block_ratio[i] for i, layers in enumerate(ctx.per_block) for name in layers}

    def ratios(self, scores: Scores, sparsity: float, **context) -> dict[Hashable, float]:
        """``scores``: one tensor per allocation unit (one-shot pools each block's Wanda scores); the
        ratios' mean weighted by the units' entries is ``sparsity``."""
        return self.ratios_from_outliers({name: self.outliers(s) for name, s in scores.items()}, sparsity,
                                         {name: s.numel() for name, s in scores.items()})

    def outliers(self, scores: torch.Tensor) -> float:
        """One unit's outlier ratio: all :meth:`ratios_from_outliers` needs of its scores (so a driver
        can reduce each unit's scores as soon as they are complete)."""
        return outlier_ratio(scores, self.m)

    def ratios_from_outliers(self, outliers: Mapping[Hashable, float], sparsity: float,
                             sizes: Mapping[Hashable, float] | None = None) -> dict[Hashable, float]:
        """Per-unit sparsities from the units' outlier ratios; ``sizes`` (parameters of each unit) weigh
        the mean that equals ``sparsity`` (default: every unit the same)."""
        weights = None if sizes is None else [sizes[name] for name in outliers]
        return dict(zip(outliers, owl_ratios(list(outliers.values()), sparsity, self.lam, weights)))


@ALLOCATIONS.register("blocks")
@dataclass
class Blocks(Allocation):
    """Per-block budgets: ``global`` within each block, against that block's own sparsity."""

    floor: float = option(0.0, "fraction of every layer that is kept (its own best entries)", min=0, max=1)

    def counts(self, scores: Scores, sparsity: float, *, blocks: Mapping[Hashable, Hashable],
               block_sparsity: Mapping[Hashable, float] | None = None, **context) -> dict[Hashable, int]:
        """``blocks``: the block of each layer; ``block_sparsity``: each block's sparsity (default:
        ``sparsity`` everywhere). ``costs``/``min_kept`` as for ``global``."""
        counts = {}
        for block in dict.fromkeys(blocks[name] for name in scores):
            members = {name: s for name, s in scores.items() if blocks[name] == block}
            target = sparsity if block_sparsity is None else block_sparsity[block]
            counts.update(Global(self.floor).counts(members, target, **context))
        return {name: counts[name] for name in scores}
