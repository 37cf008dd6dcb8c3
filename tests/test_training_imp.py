import pytest
import torch
from torch import nn

from prunekit.training.imp import IterativeMagnitudePruning, run_imp, snapshot
from prunekit.core.train import Hooks, TrainConfig, accuracy, train


def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 12, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))


def check_rewound(model, saved, imp):
    for name, value in model.state_dict().items():
        layer = name.rsplit(".", 1)[0]
        if name.endswith("weight") and layer in imp.pruner.masks:
            mask = imp.pruner.masks[layer]
            assert torch.equal(value[~mask], saved[name][~mask]), name  # survivors: exactly the saved values
            assert torch.all(value[mask] == 0), name
        else:
            assert torch.equal(value, saved[name]), name


def test_rewind_to_initialization_restores_saved_weights_exactly():
    x, y = make_data()
    model = make_model()
    init = snapshot(model)
    imp = IterativeMagnitudePruning(model, rounds=3, rate=0.5)
    train(model, (x, y), TrainConfig(epochs=2, batch_size=32), [imp.pruner, imp])
    for expected in (0.5, 0.75, 0.875):
        assert imp.next_round() == pytest.approx(expected)
        check_rewound(model, init, imp)
        assert imp.pruner.sparsity() == pytest.approx(expected, abs=0.01)
        train(model, (x, y), TrainConfig(epochs=1, batch_size=32), [imp.pruner])
    with pytest.raises(IndexError):
        imp.next_round()


def test_rewind_to_an_early_iteration():
    x, y = make_data()
    model = make_model()
    seen = {}
    imp = IterativeMagnitudePruning(model, sparsities=[0.6, 0.9], rewind_step=5)

    def record(step):
        imp.on_step(step)
        if step == 4:  # after the 5th optimizer step
            seen["w"] = snapshot(model)

    train(model, (x, y), TrainConfig(epochs=1, batch_size=32), [imp.pruner, Hooks(after_step=record)])
    assert not torch.equal(snapshot(model)["0.weight"], seen["w"]["0.weight"])
    imp.next_round()
    check_rewound(model, seen["w"], imp)


def test_masks_come_from_trained_not_rewound_weights():
    x, y = make_data()
    model = make_model()
    imp = IterativeMagnitudePruning(model, sparsities=[0.5])
    train(model, (x, y), TrainConfig(epochs=2, batch_size=32), [imp.pruner, imp])
    trained = model[0].weight.detach().abs().clone()
    imp.next_round()
    kept = trained[~imp.pruner.masks["0"]]
    dropped = trained[imp.pruner.masks["0"]]
    assert kept.min() >= dropped.max()


def test_run_imp_returns_one_score_per_round():
    x, y = make_data()

    def train_fn(model, callbacks):
        train(model, (x, y), TrainConfig(epochs=1, batch_size=32), callbacks)

    results = run_imp(make_model(), train_fn, lambda m: accuracy(m, x, y), rounds=2, rate=0.5)
    assert [s for s, _ in results] == pytest.approx([0.0, 0.5, 0.75])
    assert all(0.0 <= acc <= 1.0 for _, acc in results)


def test_bad_imp_settings_are_named():
    with pytest.raises(ValueError, match="-3"):
        IterativeMagnitudePruning(make_model(), rewind_step=-3)
    with pytest.raises(ValueError, match=r"\[0.5, 0.4\]"):
        IterativeMagnitudePruning(make_model(), sparsities=[0.5, 0.4])
