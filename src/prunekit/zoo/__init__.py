"""Small reference models used by the examples, tests and benchmarks."""

from prunekit.zoo.cnn import SmallCNN

__all__ = ["SmallCNN"]
