import pytest
import torch
from torch import nn

from prunekit.training.pruner import Pruner, prune_once
from prunekit.training.schedules import ConstantSparsity, OneShotSparsity


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def batches(n=25):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(n)]


def sgd_step(model, opt, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
], ids=["sgd-momentum", "adamw"])
def test_masks_survive_optimizer_steps(make_opt):
    model = make_model()
    opt = make_opt(model.parameters())
    # dense warm-up so momentum / Adam moments are non-zero everywhere before pruning at step 5
    pruner = Pruner(model, OneShotSparsity(0.7, at=5)).attach(opt)
    for step, (x, y) in enumerate(batches()):
        sgd_step(model, opt, x, y)
        pruner.step(step)
        if step < 5:
            continue
        for name, w in pruner.weights.items():
            pruned = pruner.masks[name]
            assert pruned.float().mean() == pytest.approx(0.7, abs=0.01)
            assert torch.all(w[pruned] == 0), name
            assert torch.all(w.grad[pruned] == 0), name
            for buf in opt.state[w].values():
                if isinstance(buf, torch.Tensor) and buf.shape == w.shape:
                    assert torch.all(buf[pruned] == 0), name
    # and the kept weights did train
    assert all(torch.count_nonzero(w) > 0 for w in pruner.weights.values())


def test_without_the_pruner_momentum_revives_pruned_weights():
    """The check above is not vacuous: masking once and training on brings pruned weights back."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = batches()
    for x, y in data[:5]:
        sgd_step(model, opt, x, y)
    pruner = prune_once(model, 0.7)
    pruner.remove()
    mask = pruner.masks["3"]
    for x, y in data[5:]:
        sgd_step(model, opt, x, y)
    assert torch.count_nonzero(model[3].weight[mask]) > 0


def test_state_dict_round_trip_and_measured_sparsity():
    model = make_model()
    pruner = prune_once(model, 0.5, criterion="random", seed=3)
    other = make_model()
    p2 = Pruner(other, ConstantSparsity(0.5))
    p2.load_state_dict(pruner.state_dict())
    for name in pruner.masks:
        assert torch.equal(pruner.masks[name], p2.masks[name])
    assert p2.sparsity() == pytest.approx(0.5, abs=0.01)
    assert p2.nonzeros() == pruner.nonzeros()


def test_unknown_target_is_named():
    with pytest.raises(ValueError, match="'head'"):
        Pruner(make_model(), ConstantSparsity(0.5), targets=["head"])
