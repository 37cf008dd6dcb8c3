"""Trainer: budgets, KD loss, KD defaults, and resuming after a crash reproduces the uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prunekit.data.dynamics import TrainingDynamics
from prunekit.core.checkpoint import load_state
from prunekit.core.train import kd_loss
from prunekit.data.train import Budget, fit, kd_defaults

torch.set_num_threads(1)


def test_budget_steps_equal_epochs_vs_equal_iterations():
    assert Budget("equal-epochs", 2).steps(300, 1000, 100) == 6
    assert Budget("equal-iterations", 2).steps(300, 1000, 100) == 20
    with pytest.raises(ValueError, match="equal-epochs"):
        Budget("same", 2)


def test_kd_loss_limits():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert torch.allclose(kd_loss(s, t, y, 3.0, 0.0), F.cross_entropy(s, y))
    assert kd_loss(t, t, y, 3.0, 1.0).abs() < 1e-6  # student == teacher: no distillation loss


def test_kd_defaults_lean_more_on_the_teacher_as_more_is_pruned():
    a = [kd_defaults(f)["alpha"] for f in (0.0, 0.3, 0.5, 0.7, 0.9)]
    assert a == sorted(a) and a[0] == 0.5 and a[-1] < 1
    with pytest.raises(ValueError):
        kd_defaults(1.0)


class Crash(RuntimeError):
    pass


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return x, y


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    x, y = _data()
    idx = np.arange(0, 96, 2)
    ref, ref_dyn = _model(), TrainingDynamics(96)
    fit(ref, x, y, idx, steps=12, batch_size=16, seed=3, dynamics=ref_dyn)  # 4 epochs of 3 steps

    def crash_at_epoch_2(epoch, model):
        if epoch == 2:
            raise Crash

    ckpt = tmp_path / "run.ckpt"
    model, dyn = _model(), TrainingDynamics(96)
    with pytest.raises(Crash):
        fit(model, x, y, idx, steps=12, batch_size=16, seed=3, dynamics=dyn, on_epoch_end=crash_at_epoch_2,
            checkpoint_path=ckpt)
    assert load_state(ckpt)["epoch"] == 1  # only the crashed epoch is lost (safetensors + JSON, no pickle)
    model, dyn = _model(), TrainingDynamics(96)
    fit(model, x, y, idx, steps=12, batch_size=16, seed=3, dynamics=dyn, checkpoint_path=ckpt)
    for a, b in zip(ref.parameters(), model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(dyn.aum(), ref_dyn.aum(), rtol=1e-5, equal_nan=True)
    assert np.isnan(dyn.aum()[1])  # odd examples were never in the subset


def test_fit_with_teacher_runs_and_learns():
    x, y = _data()
    teacher_logits = F.one_hot(y, 2).float() * 4
    m = _model()
    fit(m, x, y, steps=30, batch_size=32, lr=0.1, teacher_logits=teacher_logits, temperature=2, alpha=0.9)
    assert (m(x).argmax(1) == y).float().mean() > 0.8


@pytest.mark.parametrize("max_norm", [0.05, None])
def test_gradient_norm_is_clipped_before_every_step(max_norm):
    """KD at T >= 2 could blow up in the warm-up; ``max_grad_norm`` bounds every step's gradient."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    x, y = _data()
    norms = []

    def record(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        fit(_model(), x, y, steps=6, batch_size=32, teacher_logits=torch.randn(96, 2) * 50, temperature=4,
            alpha=0.9, max_grad_norm=max_norm)
    finally:
        handle.remove()
    assert len(norms) == 6
    if max_norm is None:
        assert max(norms) > 0.05  # the unclipped gradients are larger than the bound tested above
    else:
        assert max(norms) <= max_norm * (1 + 1e-4)
