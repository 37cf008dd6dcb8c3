"""Training-time pruning on the real Fashion-MNIST data (a 12k-image slice, 1 epoch)."""

import pytest
import torch

from prunekit.core.data_sources import fashion_mnist
from prunekit.core.train import TrainConfig, accuracy, train
from prunekit.training.pruner import Pruner, prune_once
from prunekit.training.recovery import finetune
from prunekit.training.schedules import CubicSparsity
from prunekit.zoo import SmallCNN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    x, y = fashion_mnist("train").tensors()
    xt, yt = fashion_mnist("test").tensors()
    return x[:12000], y[:12000], xt[:3000], yt[:3000]


def test_gradual_agp_reaches_90_percent_and_still_classifies(data):
    x, y, xt, yt = data
    torch.manual_seed(0)
    model = SmallCNN()
    config = TrainConfig(epochs=1, batch_size=128, lr=0.05)
    total = config.total_steps(len(y))
    pruner = Pruner(model, CubicSparsity(0.0, 0.9, start=total // 10, end=total * 6 // 10, frequency=5),
                    scope="global", floor=0.01)
    train(model, (x, y), config, [pruner])
    assert pruner.sparsity() == pytest.approx(0.9, abs=1e-4)
    assert min(1 - s for s in pruner.layer_sparsity().values()) >= 0.01
    assert accuracy(model, xt, yt) > 0.75  # dense gets ~0.82 with this budget


def test_fine_tuning_recovers_one_shot_magnitude_pruning(data):
    x, y, xt, yt = data
    torch.manual_seed(0)
    model = SmallCNN()
    train(model, (x, y), TrainConfig(epochs=1, batch_size=128, lr=0.05))
    pruner = prune_once(model, 0.95, scope="global", floor=0.01)
    pruned = accuracy(model, xt, yt)
    finetune(model, pruner, x, y, epochs=0.25, lr=0.01, batch_size=128)
    assert accuracy(model, xt, yt) > pruned + 0.01
    assert pruner.sparsity() == pytest.approx(0.95, abs=1e-4)
