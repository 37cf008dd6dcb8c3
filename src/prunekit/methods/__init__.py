"""One file per one-shot method; importing this package registers them all."""

from prunekit.methods import gblm, magnitude, random, sparsegpt, wanda  # noqa: F401
from prunekit.methods.base import LayerStats, Method

__all__ = ["LayerStats", "Method"]
