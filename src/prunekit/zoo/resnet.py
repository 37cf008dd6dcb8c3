"""A small ResNet for 28x28 grayscale images (Fashion-MNIST, MNIST).

The CIFAR-style ResNet of He et al. 2016, "Deep Residual Learning for Image Recognition", sec. 4.2:
a 3x3 stem, three stages of ``n`` basic blocks with ``w``, ``2w``, ``4w`` channels (stride 2 between
stages, 1x1 projection shortcuts where the shape changes), global average pooling and a linear head.
Depth is 6n + 2; the default ResNet-8 with width 16 has about 78k parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.core.errors import PrunekitError


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the (projected) input, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet_size(depth: int = 8, width: int = 16, num_classes: int = 10, in_channels: int = 1) -> tuple[int, int]:
    """(parameters, activation floats per 28x28 example) of ``ResNet(depth, width, num_classes, in_channels)``,
    computed without building it (a depth of 10^9 would take hours to build)."""
    blocks = max((depth - 2) // 6, 0)
    parameters = in_channels * width * 9 + 2 * width  # the stem: conv + batch norm
    activations = 3 * width * 784
    channels = width
    for i, (out, side) in enumerate(((width, 28), (2 * width, 14), (4 * width, 7))):
        shortcut = channels * out + 2 * out if i > 0 or channels != out else 0  # the first block's projection
        per_block = 9 * out * out + 9 * out * out + 4 * out  # two convs and two batch norms
        parameters += blocks * per_block + (9 * channels * out - 9 * out * out if blocks else 0) + (
            shortcut if blocks else 0)
        activations += blocks * 7 * out * side * side  # conv, bn, relu, conv, bn, sum, relu
        channels = out if blocks else channels
    parameters += channels * num_classes + num_classes
    return parameters, activations + channels + num_classes


class ResNet(nn.Module):
    """CIFAR-style ResNet of depth 6n + 2 (8, 14, 20, ...) for small grayscale images."""

    def __init__(self, depth: int = 8, width: int = 16, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise PrunekitError(f"ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth!r}")
        if width < 1:
            raise PrunekitError(f"width must be >= 1, got {width!r}")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        stages, channels = [], width
        for i, out_channels in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (input of the linear head)."""
        return self.pool(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


def resnet8(num_classes: int = 10, width: int = 16) -> ResNet:
    return ResNet(8, width, num_classes)


def resnet20(num_classes: int = 10, width: int = 16) -> ResNet:
    return ResNet(20, width, num_classes)
