"""Zero-shot tasks built offline from real text, one file each; importing the package registers them
all in :data:`prunekit.core.registry.TASKS`."""

from prunekit.evaluate.tasks import brown_continuation, brown_lastword, wordnet_gloss  # noqa: F401 - registers
from prunekit.evaluate.tasks.base import Item, Task

__all__ = ["Item", "Task"]
