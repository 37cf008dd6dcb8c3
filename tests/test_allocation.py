"""The one allocation module against brute force: every entry sorted in plain Python, then counted.

Scores are small random sets, half of them integer-valued so that ties are everywhere; the
convention under test is "lower score pruned first, ties by layer order, then by index".
"""

import math
import random

import pytest
import torch

from prunekit.core.allocation import Blocks, Global, Owl, Uniform, budget_counts, lowest_counts
from prunekit.core.errors import PrunekitError
from prunekit.core.masks import lowest_k, top_k_indices
from prunekit.core.registry import ALLOCATIONS

CASES = range(24)


def random_scores(seed: int) -> dict[str, torch.Tensor]:
    """1-5 layers of random shapes; even seeds draw from {0..4} (heavy ties), odd seeds are continuous."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    scores = {}
    for i in range(rng.randint(1, 5)):
        shape = (rng.randint(1, 6), rng.randint(1, 30))
        scores[f"layer{i}"] = (torch.randint(0, 5, shape, generator=g).float() if seed % 2 == 0
                               else torch.randn(shape, generator=g))
    return scores


def entries(scores):
    """(value, layer position, flat index, name) of every entry, in the pruning order of the convention."""
    rows = [(float(v), pos, i, name) for pos, (name, s) in enumerate(scores.items())
            for i, v in enumerate(s.reshape(-1).tolist())]
    return sorted(rows)


def brute_candidates(scores, floor=0.0, min_kept=None):
    """The entries a layer may give up: all but its ceil(floor * n) (or min_kept) best."""
    out = []
    for name, s in scores.items():
        keep = min(s.numel(), max(math.ceil(floor * s.numel()), (min_kept or {}).get(name, 0)))
        own = [e for e in entries({name: s})][: s.numel() - keep]
        pos = list(scores).index(name)
        out += [(v, pos, i, name) for v, _, i, name in own]
    return sorted(out)


def to_masks(scores, pruned):
    masks = {name: torch.zeros(s.numel(), dtype=torch.bool) for name, s in scores.items()}
    for _, _, i, name in pruned:
        masks[name][i] = True
    return {name: m.reshape(scores[name].shape) for name, m in masks.items()}


def counts_of(scores, pruned):
    return {name: sum(1 for e in pruned if e[3] == name) for name in scores}


@pytest.mark.parametrize("seed", CASES)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.95])
def test_global_is_one_threshold_with_ties_by_order(seed, sparsity):
    scores = random_scores(seed)
    total = sum(s.numel() for s in scores.values())
    expected = entries(scores)[: round(sparsity * total)]
    masks = Global().masks(scores, sparsity)
    for name in scores:
        assert torch.equal(masks[name], to_masks(scores, expected)[name]), name
    ratios = Global().ratios(scores, sparsity)
    assert ratios == {n: c / scores[n].numel() for n, c in counts_of(scores, expected).items()}


@pytest.mark.parametrize("seed", CASES)
@pytest.mark.parametrize("floor", [0.05, 0.2, 0.5])
def test_global_with_floor_keeps_each_layers_best(seed, floor):
    scores = random_scores(seed)
    total = sum(s.numel() for s in scores.values())
    candidates = brute_candidates(scores, floor)
    for sparsity in (0.1, 0.4, 0.8):
        k = round(sparsity * total)
        if k > len(candidates):
            with pytest.raises(PrunekitError, match="lower the floor or the sparsity"):
                Global(floor=floor).masks(scores, sparsity)
            continue
        masks = Global(floor=floor).masks(scores, sparsity)
        expected = to_masks(scores, candidates[:k])
        for name, s in scores.items():
            assert torch.equal(masks[name], expected[name]), (name, sparsity)
            assert int((~masks[name]).sum()) >= math.ceil(floor * s.numel())


@pytest.mark.parametrize("seed", CASES)
def test_global_with_costs_spends_the_budget_in_ascending_order(seed):
    """Structured units: each layer's entry removes ``cost`` parameters; removal stops once the budget is met."""
    scores = random_scores(seed)
    rng = random.Random(seed)
    costs = {name: rng.randint(1, 50) for name in scores}
    min_kept = {name: rng.randint(0, 3) for name in scores}
    for sparsity in (0.0, 0.2, 0.6):
        budget = sparsity * sum(s.numel() * costs[n] for n, s in scores.items())
        removed, spent = [], 0.0
        for e in brute_candidates(scores, 0.1, min_kept):
            if spent >= budget:
                break
            removed.append(e)
            spent += costs[e[3]]
        got = Global(floor=0.1).counts(scores, sparsity, costs=costs, min_kept=min_kept)
        assert got == counts_of(scores, removed)


@pytest.mark.parametrize("seed", CASES)
def test_blocks_is_global_within_each_block(seed):
    scores = random_scores(seed)
    rng = random.Random(seed)
    blocks = {name: rng.randint(0, 1) for name in scores}
    block_sparsity = {0: 0.3, 1: 0.6}
    expected = {}
    for b in (0, 1):
        members = {n: s for n, s in scores.items() if blocks[n] == b}
        if members:
            total = sum(s.numel() for s in members.values())
            expected.update(counts_of(members, entries(members)[: round(block_sparsity[b] * total)]))
    got = Blocks().counts(scores, 0.0, blocks=blocks, block_sparsity=block_sparsity)
    assert got == expected


@pytest.mark.parametrize("seed", CASES)
def test_uniform_prunes_each_layers_lowest(seed):
    scores = random_scores(seed)
    masks = Uniform().masks(scores, 0.4)
    for name, s in scores.items():
        expected = to_masks({name: s}, entries({name: s})[: round(0.4 * s.numel())])[name]
        assert torch.equal(masks[name], expected), name
    assert Uniform().ratios(scores, 0.4) == {name: 0.4 for name in scores}


@pytest.mark.parametrize("seed", CASES)
def test_owl_maps_outlier_ratios_onto_the_band(seed):
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    scores = {i: torch.rand(rng.randint(5, 200), generator=g) ** rng.choice([1, 4, 16]) for i in range(4)}
    lam, m, s = 0.05, 3.0, 0.6
    d = []
    for x in scores.values():
        values = x.tolist()
        mean = float(x.mean())
        d.append(sum(v > m * mean for v in values) / len(values))
    got = Owl(lam=lam, m=m).ratios(scores, s)
    if max(d) == min(d):
        assert list(got.values()) == [s] * 4
        return
    raw = [s + lam - (v - min(d)) / (max(d) - min(d)) * 2 * lam for v in d]
    sizes = [x.numel() for x in scores.values()]  # the mean is weighted by each unit's entries
    shifted = [r - sum(v * n for v, n in zip(raw, sizes)) / sum(sizes) + s for r in raw]
    assert list(got.values()) == pytest.approx(shifted)  # within [0, 0.99]: nothing clipped
    assert got[max(range(4), key=lambda i: d[i])] == min(got.values())  # most outliers: least pruned


@pytest.mark.parametrize("seed", CASES)
def test_lowest_counts_and_budget_counts_agree_with_unit_costs(seed):
    scores = random_scores(seed)
    total = sum(s.numel() for s in scores.values())
    for k in (0, 1, total // 3, total):
        assert lowest_counts(scores, k) == budget_counts(scores, {n: 1 for n in scores}, k)
        assert lowest_counts(scores, k) == counts_of(scores, entries(scores)[:k])


@pytest.mark.parametrize("seed", CASES)
def test_lowest_k_and_top_k_indices_follow_the_sorted_order(seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 4, (seed + 1,), generator=g).float() if seed % 2 == 0 else torch.randn(seed + 1, generator=g)
    for k in range(s.numel() + 1):
        order = sorted(range(s.numel()), key=lambda i: (float(s[i]), i))
        assert torch.equal(lowest_k(s, k), to_masks({"s": s}, [(0, 0, i, "s") for i in order[:k]])["s"])
        kept = sorted(sorted(range(s.numel()), key=lambda i: (-float(s[i]), i))[:k])
        assert top_k_indices(s, k).tolist() == kept


def test_registry_lists_and_checks_the_allocations():
    assert set(ALLOCATIONS.names()) >= {"uniform", "global", "owl", "blocks"}
    assert ALLOCATIONS.build("global", {"floor": 0.1}) == Global(floor=0.1)
    with pytest.raises(PrunekitError, match="floor"):
        ALLOCATIONS.build("global", {"floor": 1.5})
    with pytest.raises(PrunekitError, match="did you mean 'global'"):
        ALLOCATIONS.get("globl")
    with pytest.raises(PrunekitError, match="lam"):
        ALLOCATIONS.build("owl", {"lam": 1.0})
