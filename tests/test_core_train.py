"""The one training loop (core/train.py): config checks, schedules, and each callback on a tiny model."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.core.checkpoint import load_state
from prunekit.core.errors import PrunekitError
from prunekit.core.train import (
    Callback,
    Checkpoint,
    DeltaL2,
    Distillation,
    Hooks,
    Progress,
    TrainConfig,
    accuracy,
    cosine_lr,
    one_cycle,
    train,
)
from prunekit.data.dynamics import TrainingDynamics
from prunekit.training.pruner import Pruner
from prunekit.training.schedules import CubicSparsity

torch.set_num_threads(1)


def make_data(n: int = 96):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Record(Callback):
    """Keeps every batch the loop hands to ``after_step`` and the learning rate it used."""

    def __init__(self):
        self.batches, self.lrs, self.epochs = [], [], []

    def on_epoch_start(self, state):
        self.epochs.append([])

    def after_step(self, state, batch):
        self.batches.append(batch)
        self.epochs[-1].append(batch)
        self.lrs.append(state.optimizer.param_groups[0]["lr"])


# ---------------------------------------------------------------------------------- config and schedules
@pytest.mark.parametrize("settings", [
    {"epochs": 0}, {"lr": -1.0}, {"batch_size": 0}, {"optimizer": "adam"}, {"schedule": "step"}, {"steps": 0},
    {"max_grad_norm": 0.0}, {"momentum": 1.0}, {"epochs": "2"},
])
def test_bad_settings_are_one_line_errors_naming_the_setting(settings):
    (name, value), = settings.items()
    with pytest.raises(PrunekitError, match=rf"\b{name}\b.*training|training.*\b{name}\b") as err:
        TrainConfig(**settings)
    assert repr(value) in str(err.value) or str(float(value)) in str(err.value)
    assert "\n" not in str(err.value)


def test_steps_per_epoch_and_total_steps():
    assert TrainConfig(batch_size=32).steps_per_epoch(100) == 3  # the partial batch is dropped
    assert TrainConfig(batch_size=32, drop_last=False).steps_per_epoch(100) == 4
    assert TrainConfig(batch_size=32).steps_per_epoch(10) == 1  # one short batch when n < batch size
    assert TrainConfig(epochs=2.5, batch_size=32).total_steps(100) == 8  # round(2.5 * 3)
    assert TrainConfig(epochs=2.5, steps=5).total_steps(100) == 5
    assert TrainConfig(epochs=2).epochs == 2.0 and isinstance(TrainConfig(epochs=2).epochs, float)


@pytest.mark.parametrize("total", [1, 3, 7, 20, 47, 100])
def test_one_cycle_gives_the_same_floats_as_torch(total):
    """The loop sets the lr/momentum of step s from a pure function; it must equal OneCycleLR step for step."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=total, pct_start=0.15)
    for step in range(total):
        group = opt.param_groups[0]
        assert one_cycle(step, total, 0.05, 0.15) == (group["lr"], group["momentum"]), step
        opt.step()
        sched.step()


def test_the_loop_follows_the_cosine_schedule_with_warmup():
    x, y = make_data()
    rec = Record()
    n = train(make_model(), (x, y), TrainConfig(epochs=2, batch_size=16, lr=0.1, warmup=3), [rec])
    assert n == 12 and len(rec.lrs) == 12
    assert rec.lrs == [0.1 * cosine_lr(s, 12, 3) for s in range(12)]
    assert rec.lrs[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])


def test_same_seed_same_weights_and_the_global_rng_is_not_used():
    x, y = make_data()
    runs = []
    for seed in (0, 0, 1):
        model = make_model()
        before = torch.get_rng_state()
        train(model, (x, y), TrainConfig(epochs=2, batch_size=16, seed=seed))
        assert torch.equal(torch.get_rng_state(), before)
        runs.append(weights(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0]["0.weight"], runs[2]["0.weight"])


def test_each_epoch_visits_the_subset_once_in_a_new_order():
    x, y = make_data()
    subset = np.arange(0, 96, 3)  # 32 examples
    rec = Record()
    train(make_model(), (x, y), TrainConfig(epochs=2, batch_size=10, drop_last=False), [rec], indices=subset)
    assert [len(e) for e in rec.epochs] == [4, 4]
    orders = [torch.cat([b.index for b in e]) for e in rec.epochs]
    for order in orders:
        assert sorted(order.tolist()) == subset.tolist()
    assert not torch.equal(orders[0], orders[1])
    assert torch.equal(rec.batches[0].x, x[rec.batches[0].index])


@pytest.mark.parametrize(("indices", "message"), [([], "empty subset"), ([0, 96], "96 is out of range")])
def test_bad_subsets_are_refused(indices, message):
    with pytest.raises(PrunekitError, match=message):
        train(make_model(), make_data(), TrainConfig(steps=1), indices=indices)


def test_a_loss_callback_replaces_cross_entropy_and_labels_may_be_absent():
    """The language-model shape: no labels, the callback computes the loss (here: fit the inputs' mean)."""
    x, _ = make_data()

    def mean_loss(model, inputs):
        return (model(inputs).mean(1) - inputs.mean(1)).pow(2).mean()

    class MeanLoss(Callback):
        def loss(self, state, batch):
            return mean_loss(state.model, batch.x)

    model = make_model()
    before = mean_loss(model, x).item()
    config = TrainConfig(steps=30, batch_size=1, shuffle=False, optimizer="adamw", lr=0.01, max_grad_norm=1.0)
    rec = Record()
    train(model, (x, None), config, [MeanLoss(), rec])
    assert [int(b.index) for b in rec.batches] == list(range(30))  # data order, one example per step
    assert mean_loss(model, x).item() < before


def test_on_end_runs_when_a_callback_fails():
    ended = []

    class Boom(Callback):
        def after_step(self, state, batch):
            raise RuntimeError("boom")

        def on_end(self, state):
            ended.append(state.step)

    with pytest.raises(RuntimeError, match="boom"):
        train(make_model(), make_data(), TrainConfig(steps=3), [Boom()])
    assert ended == [1]


def test_accuracy_and_progress():
    x, y = make_data()
    model = make_model()
    train(model, (x, y), TrainConfig(epochs=20, batch_size=16, lr=0.1), [Progress("test")])
    model.eval()
    expected = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    assert accuracy(model, x, y, batch_size=7) == pytest.approx(expected)
    assert model.training and expected > 0.8


# ---------------------------------------------------------------------------------- callbacks
def test_pruning_keeps_masked_weights_and_their_optimizer_state_at_zero():
    x, y = make_data()
    model = make_model()
    pruner = Pruner(model, CubicSparsity(0.0, 0.8, start=2, end=10, frequency=2))
    checked = []

    class Check(Callback):  # runs after the pruner in every step
        def after_step(self, state, batch):
            for name, w in pruner.weights.items():
                mask = pruner.masks[name]
                assert torch.all(w[mask] == 0), (batch.step, name)
                assert torch.all(state.optimizer.state[w]["momentum_buffer"][mask] == 0), (batch.step, name)
            checked.append(pruner.target)

    train(model, (x, y), TrainConfig(epochs=3, batch_size=16), [pruner, Check()])
    assert len(checked) == 18 and checked[-1] == pytest.approx(0.8)
    assert pruner.sparsity() == pytest.approx(0.8, abs=0.01)
    assert pruner.optimizers == []  # detached when the loop ended


def test_distillation_loss_matches_a_hand_computation_on_one_batch():
    x, y = make_data()
    teacher = torch.randn(len(x), 3, generator=torch.Generator().manual_seed(1)) * 3
    T, alpha = 2.0, 0.7
    rec = Record()
    train(make_model(), (x, y), TrainConfig(steps=1, batch_size=16), [Distillation(teacher, T, alpha), rec])
    batch = rec.batches[0]
    s, t, labels = batch.logits.detach().double(), teacher[batch.index].double(), batch.y
    p_t = (t / T).softmax(1)
    kl = (p_t * ((t / T).log_softmax(1) - (s / T).log_softmax(1))).sum(1).mean()
    ce = -(s.log_softmax(1)[torch.arange(len(labels)), labels]).mean()
    expected = (1 - alpha) * ce + alpha * T**2 * kl
    assert batch.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_teacher_module_is_the_same_as_its_logits():
    x, y = make_data()
    teacher = make_model()
    train(teacher, (x, y), TrainConfig(epochs=3, batch_size=16))
    teacher.eval()
    with torch.no_grad():
        logits = teacher(x)
    runs = []
    for t in (teacher, logits):
        model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
        torch.manual_seed(3)
        for p in model.parameters():
            nn.init.normal_(p, std=0.3)
        train(model, (x, y), TrainConfig(epochs=2, batch_size=16), [Distillation(t, 3.0, 0.9)])
        runs.append(weights(model))
    assert all(torch.allclose(runs[0][k], runs[1][k], atol=1e-6) for k in runs[0])


def test_dynamics_record_per_example_correctness_per_epoch():
    x, y = make_data()
    subset = np.arange(0, 96, 2)
    dyn, rec = TrainingDynamics(len(x)), Record()
    train(make_model(), (x, y), TrainConfig(epochs=3, batch_size=16, drop_last=False), [dyn, rec], indices=subset)
    correct = np.stack(dyn.correct)
    assert correct.shape == (3, 96)
    assert np.isnan(correct[:, 1::2]).all()  # never presented
    for epoch, batches in enumerate(rec.epochs):
        for b in batches:
            expected = (b.logits.argmax(1) == b.y).numpy().astype(np.float32)
            np.testing.assert_array_equal(correct[epoch, b.index.numpy()], expected)
    assert np.isfinite(dyn.aum()[subset]).all()


def test_checkpoint_and_resume_give_the_same_weights_as_an_uninterrupted_run(tmp_path):
    x, y = make_data()
    config = TrainConfig(epochs=4, batch_size=16, schedule="one-cycle", max_grad_norm=5.0, seed=3)

    def run(ckpt=None, crash_at=None):
        model = make_model()
        pruner = Pruner(model, CubicSparsity(0.0, 0.7, start=0, end=15, frequency=3))
        dyn = TrainingDynamics(len(x))

        def crash(epoch, _):
            if epoch == crash_at:
                raise KeyboardInterrupt

        callbacks = [pruner, dyn, Hooks(on_epoch_end=crash)] + ([Checkpoint(ckpt)] if ckpt else [])
        train(model, (x, y), config, callbacks)
        return weights(model), pruner, dyn

    ref, ref_pruner, ref_dyn = run()
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(ckpt, crash_at=2)
    saved = load_state(ckpt)
    assert saved["epoch"] == 1 and saved["done"] == 12 and set(saved) >= {"pruner", "dynamics", "run"}
    resumed, pruner, dyn = run(ckpt)
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)
    assert all(torch.equal(ref_pruner.masks[k], pruner.masks[k]) for k in ref_pruner.masks)
    np.testing.assert_array_equal(np.stack(dyn.correct), np.stack(ref_dyn.correct))
    assert len(dyn.correct) == 4


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    x, y = make_data()
    ckpt = tmp_path / "run.ckpt"
    train(make_model(), (x, y), TrainConfig(epochs=1, batch_size=16), [Checkpoint(ckpt)])
    with pytest.raises(PrunekitError, match=r"another training run \(lr=0.05, this run has lr=0.1\)"):
        train(make_model(), (x, y), TrainConfig(epochs=1, batch_size=16, lr=0.1), [Checkpoint(ckpt)])
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(PrunekitError, match="is not a prunekit checkpoint"):
        train(make_model(), (x, y), TrainConfig(epochs=1, batch_size=16), [Checkpoint(ckpt)])


def test_a_finished_run_resumes_to_nothing_left_to_do(tmp_path):
    x, y = make_data()
    ckpt = tmp_path / "run.ckpt"
    model = make_model()
    assert train(model, (x, y), TrainConfig(epochs=1, batch_size=16), [Checkpoint(ckpt)]) == 6
    again = make_model()
    assert train(again, (x, y), TrainConfig(epochs=1, batch_size=16), [Checkpoint(ckpt)]) == 6
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_the_core_loop_imports_no_capability_package():
    tree = ast.parse((Path(__file__).resolve().parents[1] / "src/prunekit/core/train.py").read_text())
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    capabilities = ("oneshot", "structured", "training", "data", "evaluate", "cli")
    assert not [m for m in modules if m.startswith("prunekit.") and m.split(".")[1] in capabilities]


def test_delta_l2_adds_its_penalty_to_the_loss_and_gradient():
    """Three SGD steps with the penalty against plain arithmetic: W <- W - lr (grad CE(W) + 2 lambda (W - W0)),
    the cross-entropy gradient alone from autograd, the penalty's gradient written out; a frozen layer
    is neither trained nor penalised, and the recorded penalty is lambda * ||W - W0||^2."""
    x, y = make_data(32)
    strength, lr = 0.7, 0.1
    model = make_model()
    model[0].weight.requires_grad_(False)
    start = weights(model)
    config = TrainConfig(steps=3, batch_size=32, lr=lr, momentum=0.0, weight_decay=0.0, schedule="constant",
                         shuffle=False)
    penalty, seen = DeltaL2(strength), []
    train(model, (x, y), config, [penalty, Hooks(after_step=lambda step: seen.append(penalty.last))])

    ref = make_model()
    params = {name: p for name, p in ref.named_parameters() if name != "0.weight"}
    expected_penalty = []
    for _ in range(3):
        drift = {name: p.detach() - start[name] for name, p in params.items()}
        expected_penalty.append(strength * sum(float(d.pow(2).sum()) for d in drift.values()))
        grads = torch.autograd.grad(nn.functional.cross_entropy(ref(x), y), list(params.values()))
        with torch.no_grad():
            for (name, p), g in zip(params.items(), grads):
                p -= lr * (g + 2 * strength * drift[name])
    got = weights(model)
    assert torch.equal(got["0.weight"], start["0.weight"])
    for name, p in params.items():
        torch.testing.assert_close(got[name], p.detach(), rtol=0, atol=1e-6)
    assert seen == pytest.approx(expected_penalty, rel=1e-5) and seen[0] == 0.0 and seen[2] > 0
    plain = make_model()
    plain[0].weight.requires_grad_(False)
    train(plain, (x, y), config)
    assert not torch.allclose(weights(plain)["2.weight"], got["2.weight"])  # the penalty changed the run
    for bad in (-1.0, float("nan"), True, "0.1"):
        with pytest.raises(PrunekitError, match="L2 strength"):
            DeltaL2(bad)
