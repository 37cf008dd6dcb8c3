"""Selectors: exact counts, exact class quotas, CCS cutoff and strata, recipes, outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunekit.core.registry import SELECTORS
from prunekit.data.select import (
    Selection,
    apply_recipe,
    ccs_default_beta,
    class_quotas,
    select,
    selection_steps,
)

N = 1000
RNG = np.random.default_rng(0)
SCORES = RNG.normal(size=N)
# imbalanced classes: 500 / 300 / 150 / 50
LABELS = np.repeat([0, 1, 2, 3], [500, 300, 150, 50])
RNG.shuffle(LABELS)


@pytest.mark.parametrize("method", SELECTORS.names())
@pytest.mark.parametrize("keep", [0.1, 0.3, 0.5, 0.7, 0.9, 1, 333])
@pytest.mark.parametrize("balanced", [False, True])
def test_every_selector_returns_exactly_the_requested_count(method, keep, balanced):
    if method == "band" and (keep in (0.9, 1) or keep == 333):
        opts = {"offset": 0.05}
    else:
        opts = {"offset": 0.05} if method == "band" else {}
    k = round(keep * N) if isinstance(keep, float) else keep
    if method == "band" and k + 50 > N:
        pytest.skip("band offset + keep exceeds the dataset")
    idx = select(SCORES, keep, method, labels=LABELS, class_balanced=balanced, seed=1, **opts)
    assert len(idx) == k and len(np.unique(idx)) == k
    if balanced:
        quotas = class_quotas(LABELS, k)
        got = {c: int((LABELS[idx] == c).sum()) for c in quotas}
        assert got == quotas


def test_class_quotas_are_exact_and_use_each_class_count():
    q = class_quotas(LABELS, 100)
    assert q == {0: 50, 1: 30, 2: 15, 3: 5}
    q = class_quotas(LABELS, 101)
    assert sum(q.values()) == 101 and all(abs(q[c] - 101 * n / N) < 1 for c, n in zip(range(4), [500, 300, 150, 50]))
    # a class can never get more than it has; the rest is redistributed
    tiny = np.array([0] * 98 + [1] * 2)
    assert class_quotas(tiny, 100) == {0: 98, 1: 2}
    with pytest.raises(ValueError):
        class_quotas(tiny, 101)


def test_hardest_easiest_band_pick_the_right_ranks():
    order = np.argsort(-SCORES)
    assert set(select(SCORES, 100, "hardest")) == set(order[:100])
    assert set(select(SCORES, 100, "easiest")) == set(order[-100:])
    assert set(select(SCORES, 100, "band", offset=0.2)) == set(order[200:300])


def test_ccs_drops_the_hard_cutoff_and_covers_the_score_range():
    beta = 0.1
    idx = select(SCORES, 200, "ccs", beta=beta, bins=10, seed=0)
    order = np.argsort(-SCORES)
    assert not set(idx) & set(order[: int(beta * N)])
    kept = SCORES[idx]
    # stratified: the kept examples span the (cut) score range instead of one end of it
    remaining = SCORES[order[int(beta * N):]]
    assert kept.min() < np.quantile(remaining, 0.05) and kept.max() > np.quantile(remaining, 0.95)
    # sparse strata are taken whole: the easiest tail is over-represented relative to uniform sampling
    lo_tail = (kept < np.quantile(remaining, 0.02)).mean()
    assert lo_tail > 0.02
    with pytest.raises(ValueError, match="cannot keep"):
        select(SCORES, 950, "ccs", beta=0.1)


def test_ccs_default_beta_grows_with_pruning_and_never_exceeds_it():
    assert ccs_default_beta(0.3) == 0 and ccs_default_beta(0.5) == 0
    assert 0 < ccs_default_beta(0.7) < ccs_default_beta(0.9) <= 0.9
    assert all(ccs_default_beta(f) <= f for f in np.linspace(0, 0.99, 50))


def test_recipe_steps_compose():
    steps = [{"method": "easiest", "keep": 0.9}, {"method": "ccs", "keep": 0.3, "bins": 5, "class_balanced": True}]
    sel = apply_recipe(SCORES, steps, labels=LABELS, seed=0)
    assert len(sel) == 300
    hardest_10pct = set(np.argsort(-SCORES)[:100])
    assert not set(sel.indices) & hardest_10pct  # step 1 removed them, step 2 chose from the rest
    with pytest.raises(ValueError, match="unknown selector 'nope'"):
        selection_steps([{"method": "nope", "keep": 0.5}])
    with pytest.raises(ValueError, match="unknown key 'betta'.*did you mean 'beta'"):
        selection_steps([{"method": "ccs", "keep": 0.5, "betta": 0.1}])


class FakeHFDataset:
    """The part of ``datasets.Dataset`` a filter needs."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def filter(self, fn, with_indices=False):
        assert with_indices
        return FakeHFDataset([r for i, r in enumerate(self.rows) if fn(r, i)])


def test_selection_outputs_agree():
    sel = Selection(np.array([7, 2, 5]), 10)
    np.testing.assert_array_equal(sel.indices, [2, 5, 7])
    assert sel.mask.sum() == 3 and sel.mask[[2, 5, 7]].all()
    ds = torch.utils.data.TensorDataset(torch.arange(10))
    assert [int(ds_item[0]) for ds_item in sel.subset(ds)] == [2, 5, 7]
    hf = sel.hf_filter(FakeHFDataset([{"text": str(i)} for i in range(10)]))
    assert [r["text"] for r in hf.rows] == ["2", "5", "7"]
    assert sel.fraction_removed == pytest.approx(0.7)
    with pytest.raises(ValueError):
        sel.subset(torch.utils.data.TensorDataset(torch.arange(9)))


def test_selection_save_load(tmp_path):
    sel = Selection(np.array([1, 4]), 6)
    sel.save(tmp_path / "s.npz")
    back = Selection.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.indices, sel.indices)
    assert back.n_total == 6


def test_bad_selector_arguments_raise():
    with pytest.raises(ValueError, match="did you mean 'hardest'"):
        select(SCORES, 0.5, "hardestt")
    with pytest.raises(ValueError):
        select(SCORES, 1.5, "random")
    with pytest.raises(ValueError):
        select(SCORES, 0.5, "random", class_balanced=True)  # no labels
