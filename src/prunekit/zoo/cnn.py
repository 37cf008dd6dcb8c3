"""The reference CNN for 28x28 grayscale images (Fashion-MNIST, MNIST).

Two 3x3 conv layers with max-pooling and a two-layer classifier; about 0.42M parameters.
One epoch of Fashion-MNIST takes ~20 s on 2 CPU cores and reaches ~88% test accuracy.
"""

from __future__ import annotations

import torch
from torch import nn


def small_cnn_size(width: int = 32, hidden: int = 128, num_classes: int = 10) -> tuple[int, int]:
    """(parameters, activation floats per 28x28 example) of ``SmallCNN(num_classes, width, hidden)``,
    computed without building it (``prunekit train`` checks a width fits before allocating)."""
    parameters = (9 * width + width) + (9 * width * 2 * width + 2 * width) + (2 * width * 49 * hidden + hidden) + (
        hidden * num_classes + num_classes)
    activations = 2 * width * 784 + width * 196 + 2 * 2 * width * 196 + 2 * width * 49 + 2 * hidden + num_classes
    return parameters, activations


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32, hidden: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (input of the last Linear), for geometry-based data scores."""
        return self.classifier[:-1](self.features(x))
