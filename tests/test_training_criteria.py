import math

import pytest
import torch
from torch import nn

from prunekit.training.criteria import compute_masks, global_masks, keep_count
from prunekit.training.pruner import prune_once


def collapsing_model():
    """A big layer with normal weights, then a small layer whose weights are all ~1000x smaller."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    return model


def test_plain_global_empties_a_layer_and_floor_does_not():
    plain = prune_once(collapsing_model(), 0.8, scope="global")
    assert plain.masks["2"].all()  # the small layer is gone (True = pruned): the network outputs a constant
    floored = prune_once(collapsing_model(), 0.8, scope="global", floor=0.05)
    for name, mask in floored.masks.items():
        assert (~mask).sum() >= math.ceil(0.05 * mask.numel()), name
    total = sum(m.numel() for m in floored.masks.values())
    assert floored.nonzeros() == keep_count(total, 0.8)


def test_floor_keeps_each_layers_own_best_weights():
    scores = {"a": torch.arange(100.0), "b": torch.arange(10.0) * 1e-6}
    masks = global_masks(scores, 0.8, floor=0.15)  # keeps 22 of 110: floors 15 + 2, 5 more go to "a"
    assert (~masks["b"]).sum() == 2 and not masks["b"][-2:].any()
    assert (~masks["a"]).sum() == 20 and not masks["a"][-20:].any()


def test_floor_larger_than_budget_is_an_error_naming_values():
    with pytest.raises(ValueError, match="0.5"):
        global_masks({"a": torch.rand(100)}, 0.9, floor=0.5)


def test_layerwise_is_exact_and_monotone_for_random_scores():
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(37, 11), "b": torch.randn(101)}
    m1 = compute_masks(weights, 0.5, "random", generator=g)
    m2 = compute_masks(weights, 0.8, "random", masks=m1, generator=g)
    for n, w in weights.items():
        assert int((~m1[n]).sum()) == keep_count(w.numel(), 0.5)
        assert int((~m2[n]).sum()) == keep_count(w.numel(), 0.8)
        assert not (m1[n] & ~m2[n]).any()  # nothing pruned comes back


def test_magnitude_keeps_the_largest():
    masks = compute_masks({"w": torch.tensor([0.1, -3.0, 0.5, 2.0])}, 0.5, "magnitude")
    assert masks["w"].tolist() == [True, False, True, False]  # True = pruned


def test_unknown_criterion_and_scope_are_named():
    with pytest.raises(ValueError, match="'snip'"):
        compute_masks({"a": torch.rand(4)}, 0.5, criterion="snip")
    with pytest.raises(ValueError, match="'block'"):
        compute_masks({"a": torch.rand(4)}, 0.5, scope="block")
