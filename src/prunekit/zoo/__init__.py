"""Small reference models used by the examples, tests and benchmarks."""

from prunekit.zoo.cnn import SmallCNN
from prunekit.zoo.resnet import ResNet

__all__ = ["ResNet", "SmallCNN"]
