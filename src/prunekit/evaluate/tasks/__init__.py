"""Zero-shot tasks built offline from real text, one file each; importing the package registers them
all in :data:`prunekit.core.registry.TASKS`."""

from prunekit.evaluate.tasks import (  # noqa: F401 - registers
    brown_continuation,
    brown_genre,
    brown_lastword,
    wordnet_gloss,
)
from prunekit.evaluate.tasks.base import Item, Task

__all__ = ["Item", "Task"]
