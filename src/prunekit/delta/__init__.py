"""Delta pruning: prune the difference between a fine-tuned model and its base (DARE and its fixes).

One file per method; importing this package registers them all in
:data:`prunekit.core.registry.DELTA_METHODS` (``prunekit delta``, recipe steps of kind ``delta``)."""

from prunekit.delta import dare, darex_q, magnitude, wanda  # noqa: F401
from prunekit.delta.base import DeltaContext, DeltaMethod

__all__ = ["DeltaContext", "DeltaMethod"]
