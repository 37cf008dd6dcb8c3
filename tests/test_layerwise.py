"""The one per-layer loop (core/layerwise.py) and the one method registry: a one-shot method gives the same
mask as a delta score when the base is zero (the delta is the weights), and training takes exactly the
one-shot methods that do not update weights."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch

import prunekit
from prunekit.core.calibration import BlockWeights
from prunekit.core.errors import PrunekitError
from prunekit.core.families import adapter_for, weight_view
from prunekit.core.layerwise import layer_generator, prune_layers, target_layers
from prunekit.core.recipe import CalibrationConfig
from prunekit.core.registry import DELTA_METHODS, METHODS
from prunekit.core.stats import LAYER_NEEDS
from prunekit.delta.prune import prune_delta
from prunekit.oneshot.base import Method, score_methods
from prunekit.training.criteria import criteria, needs_data, needs_labels
from prunekit.training.pruner import Pruner
from prunekit.training.schedules import ConstantSparsity
from prunekit.training.step import TrainingStep
from tests.conftest import tiny_model, tiny_windows

DELTA_SCORES = [n for n in METHODS.names() if not METHODS.get(n).updates_weights and METHODS.get(n).needs <= LAYER_NEEDS]


def linears(model) -> dict[str, torch.Tensor]:
    adapter = adapter_for(model)
    return {name: weight_view(m).detach().clone() for i in range(len(adapter.blocks))
            for name, m in adapter.linears(i).items()}


@pytest.mark.parametrize("name", DELTA_SCORES)
def test_a_method_prunes_a_delta_of_zero_base_as_it_prunes_the_weights(name):
    windows = tiny_windows(4, 32)
    oneshot = tiny_model("llama")
    prunekit.prune(oneshot, method=name, sparsity=0.5, seed=3, calibration=windows, progress=False)
    finetuned = tiny_model("llama")
    base = copy.deepcopy(finetuned)
    with torch.no_grad():
        for p in base.parameters():
            p.zero_()
    calib = CalibrationConfig(source=windows, nsamples=4, seqlen=32)
    prune_delta(base, finetuned, method=name, sparsity=0.5, seed=3, calibration=calib)
    expected, got = linears(oneshot), linears(finetuned)
    assert expected.keys() == got.keys()
    for layer in expected:
        assert torch.equal(expected[layer] == 0, got[layer] == 0), layer
        assert torch.equal(expected[layer], got[layer]), layer


def test_delta_methods_are_their_own_and_the_score_methods():
    assert {"dare", "darex-q", "magnitude", "wanda"} <= set(DELTA_METHODS.names())
    assert set(DELTA_METHODS.names()) == {"dare", "darex-q", *DELTA_SCORES}
    assert "sparsegpt" not in DELTA_METHODS and "gblm" not in DELTA_METHODS  # updates weights; reads gradients
    assert DELTA_METHODS.build("wanda").needs == METHODS.get("wanda").needs
    assert DELTA_METHODS.build("wanda", {"per_row": False}).pattern().kind == "unstructured"
    with pytest.raises(PrunekitError, match="per_row"):
        DELTA_METHODS.build("magnitude", {"per_row": "yes"})


def test_training_takes_exactly_the_methods_that_do_not_update_weights():
    expected = {n for n in METHODS.names() if not METHODS.get(n).updates_weights}
    assert set(criteria()) == expected == set(score_methods())
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for name in METHODS.names():
        if name in expected:
            TrainingStep(criterion=name)
            calibration = (x, y) if needs_data(name) else None
            Pruner(model, ConstantSparsity(0.5), name, calibration=calibration).step(0)
        else:
            with pytest.raises(PrunekitError, match=name):
                TrainingStep(criterion=name)
            with pytest.raises(PrunekitError, match=name):
                Pruner(model, ConstantSparsity(0.5), name)
    assert needs_labels("gblm") and not needs_labels("wanda") and not needs_data("magnitude")


def test_a_newly_registered_method_is_a_training_criterion_by_its_flags():
    @dataclass
    class Squared(Method):
        """w^2."""

        def scores(self, weight, ctx):
            return weight.detach().pow(2)

    METHODS.register("squared-test")(Squared)
    try:
        assert "squared-test" in criteria()
        model = torch.nn.Linear(8, 4)
        pruner = Pruner(model, ConstantSparsity(0.5), "squared-test")
        pruner.step(0)
        assert pruner.sparsity() == 0.5
    finally:
        del METHODS._entries["squared-test"]


def test_target_layers_and_the_loop_without_statistics():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    per_block = target_layers(adapter, ["re:mlp"], ["re:down_proj"])
    assert [sorted(n.rsplit(".", 1)[1] for n in b) for b in per_block] == [["gate_proj", "up_proj"]] * 2
    with pytest.raises(PrunekitError, match="match no layer"):
        target_layers(adapter, ["re:nothing"], [])
    visits = []

    class Watched(BlockWeights):
        @contextmanager
        def block(self, index, module):
            visits.append(("in", index))
            yield
            visits.append(("out", index))

    prune_layers(adapter, per_block, lambda name, module, stats: visits.append((name, stats)), weights=Watched(),
                 progress=False)
    names = [v[0] for v in visits]
    assert names[0] == "in" and names[3] == "out" and names[4] == "in" and names[-1] == "out"
    assert all(v[1] is None for v in visits if v[0] not in ("in", "out"))


def test_layer_generator_depends_on_seed_and_name_only():
    a = torch.rand(4, generator=layer_generator(3, "model.layers.0.mlp.up_proj"))
    b = torch.rand(4, generator=layer_generator(3, "model.layers.0.mlp.up_proj"))
    c = torch.rand(4, generator=layer_generator(3, "model.layers.1.mlp.up_proj"))
    assert torch.equal(a, b) and not torch.equal(a, c)
