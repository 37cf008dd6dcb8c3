"""One-shot pruning after training: one file per method; importing this package registers them all
in :data:`prunekit.core.registry.METHODS` (and the ``oneshot`` recipe step)."""

from prunekit.oneshot import gblm, magnitude, random, sparsegpt, step, wanda  # noqa: F401
from prunekit.oneshot.base import LayerContext, Method
from prunekit.oneshot.step import PruneStep

__all__ = ["LayerContext", "Method", "PruneStep"]
