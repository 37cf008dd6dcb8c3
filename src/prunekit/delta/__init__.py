"""Delta pruning: prune the difference between a fine-tuned model and its base (DARE and its fixes).

One file per method of its own (DARE, DAREx-q); the one-shot methods that score weights (magnitude,
Wanda, random ...) are delta methods too (:mod:`prunekit.delta.scores`). Importing this package
registers them all in :data:`prunekit.core.registry.DELTA_METHODS` (``prunekit delta``, recipe steps
of kind ``delta``)."""

from prunekit.delta import dare, darex_q, scores
from prunekit.delta.base import DeltaContext, DeltaMethod

scores.register_score_methods()

__all__ = ["DeltaContext", "DeltaMethod", "dare", "darex_q"]
