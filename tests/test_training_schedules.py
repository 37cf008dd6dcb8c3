import pytest
import torch
from torch import nn

from prunekit.training.pruner import Pruner
from prunekit.training.schedules import (
    ConstantSparsity,
    CubicSparsity,
    LinearSparsity,
    OneShotSparsity,
    imp_sparsities,
    make_schedule,
)


def agp(step, s_i, s_f, t0, n, dt):
    """Zhu & Gupta eq. (1), written independently: update steps t0 + k*dt, k = 0..n."""
    if step < t0:
        return 0.0
    k = min((step - t0) // dt, n)
    return s_f + (s_i - s_f) * (1 - k * dt / (n * dt)) ** 3


def test_cubic_matches_zhu_gupta_formula_at_every_step():
    sched = CubicSparsity(initial=0.1, final=0.9, start=10, end=70, frequency=6)
    for step in range(100):
        assert sched(step) == pytest.approx(agp(step, 0.1, 0.9, 10, 10, 6), abs=1e-12), step
    assert sched(9) == 0.0
    assert sched(10) == pytest.approx(0.1)
    assert sched(70) == sched(1000) == pytest.approx(0.9)
    values = [sched(t) for t in range(10, 80)]
    assert values == sorted(values)
    # cubic: the first interval prunes more than the last one
    assert sched(16) - sched(10) > sched(70) - sched(64)


def test_linear_constant_oneshot():
    lin = LinearSparsity(0.0, 0.8, start=0, end=8, frequency=2)
    assert [lin(t) for t in range(10)] == pytest.approx([0, 0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.6, 0.8, 0.8])
    assert ConstantSparsity(0.5, start=3)(2) == 0.0 and ConstantSparsity(0.5, start=3)(3) == 0.5
    assert OneShotSparsity(0.7, at=5)(4) == 0.0 and OneShotSparsity(0.7, at=5)(99) == 0.7
    assert isinstance(make_schedule("cubic", 0.9, 0, 10), CubicSparsity)


def test_imp_sparsities_are_geometric():
    assert imp_sparsities(3, 0.2) == pytest.approx([0.2, 0.36, 0.488])


@pytest.mark.parametrize("build, bad", [
    (lambda: CubicSparsity(0.0, 1.5, 0, 10), "1.5"),
    (lambda: CubicSparsity(0.0, 0.5, 10, 10), "10"),
    (lambda: LinearSparsity(0.0, 0.5, 0, 10, frequency=0), "0"),
    (lambda: make_schedule("exponential", 0.5), "exponential"),
    (lambda: imp_sparsities(3, 1.2), "1.2"),
])
def test_bad_schedule_values_are_named(build, bad):
    with pytest.raises(ValueError, match=bad):
        build()


def test_pruner_hits_the_cubic_sparsity_exactly_at_every_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 7))
    sched = CubicSparsity(0.0, 0.85, start=5, end=45, frequency=4)
    pruner = Pruner(model, sched)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner.attach(opt)
    x, y = torch.randn(64, 20), torch.randint(0, 7, (64,))
    for step in range(60):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step(step)
        for layer in (model[0], model[2]):
            expected_zeros = round(sched(step) * layer.weight.numel())
            assert int((layer.weight == 0).sum()) == expected_zeros, (step, sched(step))
    assert pruner.sparsity() == pytest.approx(0.85, abs=1e-3)


@pytest.mark.parametrize("name", __import__("prunekit.core.registry", fromlist=["SCHEDULES"]).SCHEDULES.names())
def test_every_registered_schedule_is_a_pure_bounded_function_of_the_step(name):
    """Each schedule from the registry: zero before its start, the target from its end on, never
    decreasing, never above the target, and the same value however often or in which order asked."""
    from prunekit.core.registry import SCHEDULES

    sched = make_schedule(name, 0.8, start=5, end=45, frequency=4)
    assert isinstance(sched, SCHEDULES.get(name))
    values = [sched(t) for t in range(60)]
    assert all(v == 0.0 for v in values[:5])
    assert values[45:] == [pytest.approx(0.8)] * 15
    assert values == sorted(values) and max(values) <= 0.8 + 1e-12
    assert [sched(t) for t in reversed(range(60))] == values[::-1]  # pure: no state between calls
