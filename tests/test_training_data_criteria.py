"""Data-aware criteria (Wanda, GBLM from the one-shot foundation) inside the training-time pruner."""

import pytest
import torch
from torch import nn

from prunekit.training.criteria import keep_count
from prunekit.training.data_criteria import collect_stats, data_scores
from prunekit.training.pruner import Pruner, prune_once
from prunekit.training.schedules import CubicSparsity


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def top_mask(scores, keep):
    """The kept weights (the complement of a pruner mask, whose True = pruned)."""
    flat = torch.zeros(scores.numel(), dtype=torch.bool)
    flat[torch.argsort(scores.reshape(-1), descending=True)[:keep]] = True
    return flat.reshape(scores.shape)


def test_wanda_masks_match_an_independent_computation():
    model = mlp()
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1)) * torch.tensor([5.0, 1, 1, 0.1, 1, 2])
    with torch.no_grad():
        inputs = {"0": x, "2": torch.relu(model[0](x))}
        expected = {}
        for name, layer in (("0", model[0]), ("2", model[2])):
            norms = (inputs[name] ** 2).sum(0).div(len(x)).sqrt()  # sqrt(mean over samples of x_j^2)
            scores = layer.weight.abs() * norms[None, :]
            expected[name] = top_mask(scores, keep_count(scores.numel(), 0.5))
    pruner = prune_once(model, 0.5, "wanda", calibration=x)
    for name in expected:
        assert torch.equal(~pruner.masks[name], expected[name]), name
        assert torch.all(model.get_submodule(name).weight[~expected[name]] == 0)


def test_wanda_keeps_a_small_weight_on_a_loud_input_that_magnitude_drops():
    def one_neuron():
        layer = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([[1.0, 0.9, 0.1, 0.2]]))
        return nn.Sequential(layer)

    x = torch.ones(8, 4) * torch.tensor([1.0, 1.0, 100.0, 1.0])
    assert prune_once(one_neuron(), 0.5).masks["0"].tolist() == [[False, False, True, True]]  # True = pruned
    assert prune_once(one_neuron(), 0.5, "wanda", calibration=x).masks["0"].tolist() == [[False, True, False, True]]


def test_conv_input_norms_are_the_im2col_column_norms():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    model = nn.Sequential(conv)
    x = torch.randn(4, 2, 7, 7)
    stats = collect_stats(model, {"0": conv}, x)["0"]
    # independent: pad, walk the output grid, flatten each (channel, ky, kx) patch in weight order
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    sq = torch.zeros(2 * 3 * 3)
    for i in range(4):
        for j in range(4):
            patch = padded[:, :, 2 * i: 2 * i + 3, 2 * j: 2 * j + 3].reshape(4, -1)
            sq += (patch ** 2).sum(0)
    assert torch.allclose(stats.sq_norms, sq, rtol=1e-5)
    assert torch.allclose(stats.column_norms(), (sq / 4).sqrt(), rtol=1e-5)


def test_gblm_scores_use_per_sample_gradients():
    model = mlp()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 6, generator=g), torch.randint(0, 3, (12,), generator=g)
    # independent per-sample gradients with .backward() one sample at a time
    sq = {"0": torch.zeros(8, 6), "2": torch.zeros(3, 8)}
    for i in range(12):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i: i + 1]), y[i: i + 1]).backward()
        for name in sq:
            sq[name] += model.get_submodule(name).weight.grad ** 2
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        inputs = {"0": x, "2": torch.relu(model[0](x))}
    modules = {"0": model[0], "2": model[2]}
    scores = data_scores(model, modules, "gblm", (x, y))
    expected = {}
    for name, layer in modules.items():
        norms = (inputs[name] ** 2).sum(0).div(12).sqrt()
        expected[name] = layer.weight.detach().abs() * (100.0 * sq[name].sqrt() + norms[None, :])
        assert torch.allclose(scores[name], expected[name], rtol=1e-4, atol=1e-7), name
        assert layer.weight.grad is None  # the training step's gradients are not touched
    # and through the pruner (which updates masks under no_grad): the top 40% of those scores per layer
    pruner = prune_once(model, 0.6, "gblm", calibration=(x, y))
    for name, s in expected.items():
        assert torch.equal(~pruner.masks[name], top_mask(s, keep_count(s.numel(), 0.6))), name


def test_gradual_wanda_in_a_training_loop_hits_the_schedule_and_keeps_zeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 5, (64,), generator=g)
    sched = CubicSparsity(0.0, 0.8, start=2, end=14, frequency=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = Pruner(model, sched, "wanda", scope="global", floor=0.05, calibration=x[:16]).attach(opt)
    previous = {n: m.clone() for n, m in pruner.masks.items()}
    for step in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step(step)
        total = sum(m.numel() for m in pruner.masks.values())
        assert pruner.nonzeros() == keep_count(total, sched(step)), step
        for name, mask in pruner.masks.items():
            assert not (previous[name] & ~mask).any()  # monotone: nothing pruned comes back
            assert torch.all(pruner.weights[name][mask] == 0)
            assert (~mask).sum() >= 0.05 * mask.numel()
        previous = {n: m.clone() for n, m in pruner.masks.items()}
    assert pruner.sparsity() == pytest.approx(0.8, abs=0.01)


def test_data_criteria_errors_are_named():
    with pytest.raises(ValueError, match="calibration"):
        Pruner(mlp(), CubicSparsity(0.0, 0.5, 0, 10), "wanda")
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        Pruner(mlp(), CubicSparsity(0.0, 0.5, 0, 10), "gblm", calibration=torch.randn(4, 6))
    with pytest.raises(ValueError, match="'snip'"):
        Pruner(mlp(), CubicSparsity(0.0, 0.5, 0, 10), "snip")
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="groups=2"):
        prune_once(grouped, 0.5, "wanda", calibration=torch.randn(2, 4, 5, 5))
