"""Where prunekit keeps its user cache (converted models, npm data, tokenized streams)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of prunekit's user cache (``$PRUNEKIT_CACHE`` or ``~/.cache/prunekit``)."""
    env = os.environ.get("PRUNEKIT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prunekit"
