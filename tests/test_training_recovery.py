import torch
from torch import nn

from prunekit.training.pruner import prune_once
from prunekit.training.recovery import MaskedLoRA, add_masked_lora, finetune, merge_lora, perp_recover
from prunekit.zoo import ResNet


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4))


def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 8, 8, generator=g)
    return x, (x[:, 0, :4].mean((1, 2)) > 0).long() + 2 * (x[:, 0, 4:].mean((1, 2)) > 0).long()


def test_lora_merge_keeps_pruned_weights_at_zero():
    model = make_model()
    pruner = prune_once(model, 0.7)
    before = {n: w.detach().clone() for n, w in pruner.weights.items()}
    add_masked_lora(model, pruner.masks, rank=3)
    with torch.no_grad():  # make B A dense and non-zero everywhere, including pruned positions
        for m in model.modules():
            if isinstance(m, MaskedLoRA):
                m.lora_b.normal_()
    x, _ = make_data()
    model.eval()
    out_adapted = model(x)
    assert merge_lora(model) == 3
    assert not any(isinstance(m, MaskedLoRA) for m in model.modules())
    torch.testing.assert_close(model(x), out_adapted, rtol=1e-4, atol=1e-4)  # merge is exact
    for name, w in pruner.weights.items():
        mask = pruner.masks[name]
        assert torch.all(w[mask] == 0), name
        assert not torch.equal(w[~mask], before[name][~mask]), name  # the adapters did change kept weights


def test_perp_trains_only_biases_and_norms_without_lora():
    model = make_model()
    pruner = prune_once(model, 0.6)
    weights = {n: w.detach().clone() for n, w in pruner.weights.items()}
    bias = model[4].bias.detach().clone()
    bn = model[1].weight.detach().clone()
    x, y = make_data()
    perp_recover(model, pruner, x, y, epochs=2, lr=1e-2, batch_size=32)
    for name, w in pruner.weights.items():
        assert torch.equal(w, weights[name]), name
    assert not torch.equal(model[4].bias, bias)
    assert not torch.equal(model[1].weight, bn)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again


def test_perp_with_lora_changes_kept_weights_only():
    model = make_model()
    pruner = prune_once(model, 0.6)
    x, y = make_data()
    perp_recover(model, pruner, x, y, epochs=2, lr=1e-2, lora_rank=2, batch_size=32)
    assert not any(isinstance(m, MaskedLoRA) for m in model.modules())
    assert abs(pruner.sparsity() - 0.6) < 0.01
    for name, w in pruner.weights.items():
        assert torch.all(w[pruner.masks[name]] == 0), name


def test_finetune_keeps_masks_and_improves_loss():
    model = make_model()
    pruner = prune_once(model, 0.8)
    x, y = make_data()
    loss0 = nn.functional.cross_entropy(model(x), y).item()
    finetune(model, pruner, x, y, epochs=5, lr=0.05, batch_size=32)
    assert nn.functional.cross_entropy(model(x), y).item() < loss0
    assert abs(pruner.sparsity() - 0.8) < 0.01


def test_resnet_prunes_and_recovers():
    torch.manual_seed(0)
    model = ResNet(depth=8, width=4)
    pruner = prune_once(model, 0.5, scope="global", floor=0.1)
    assert len(pruner.weights) == 1 + 6 + 2 + 1  # stem, 3x2 block convs, 2 projections, head
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    perp_recover(model, pruner, x, y, epochs=1, lora_rank=2, batch_size=32)
    assert abs(pruner.sparsity() - 0.5) < 0.01
    assert model(x[:2]).shape == (2, 10)
