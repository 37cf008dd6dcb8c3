"""Stable example ids: the dataset index plus a hash of the example's content.

The index alone breaks as soon as a dataset is shuffled or re-sorted (a known defect of tools that
store scores in class-sorted order); the content hash lets a score be mapped back to the example
itself. ``align`` does that mapping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from prunekit.core.errors import UnknownKey


def content_hash(example: torch.Tensor | np.ndarray | bytes | str, label: int | None = None) -> str:
    """First 16 hex digits of the SHA-1 of the example's bytes (and label, when given)."""
    if isinstance(example, torch.Tensor):
        data = example.detach().cpu().contiguous().numpy().tobytes()
    elif isinstance(example, np.ndarray):
        data = np.ascontiguousarray(example).tobytes()
    elif isinstance(example, str):
        data = example.encode("utf-8")
    else:
        data = bytes(example)
    h = hashlib.sha1(data)
    if label is not None:
        h.update(f"|{int(label)}".encode())
    return h.hexdigest()[:16]


def example_ids(examples: Sequence | torch.Tensor, labels: Iterable[int] | None = None) -> list[str]:
    """Hashes for a stack of examples (a tensor ``(N, ...)`` or a list of strings/arrays)."""
    labels = [None] * len(examples) if labels is None else [int(v) for v in labels]
    return [content_hash(ex, lab) for ex, lab in zip(examples, labels)]


def make_id(index: int, chash: str) -> str:
    """The row key: ``"<index>:<hash>"``."""
    return f"{int(index)}:{chash}"


def align(source_hashes: Sequence[str], values: np.ndarray, target_hashes: Sequence[str]) -> np.ndarray:
    """Reorder ``values`` (given in ``source_hashes`` order) into ``target_hashes`` order.

    Exact duplicates share a hash; they are matched in order of appearance. A target hash that is
    missing from the source raises ``KeyError`` rather than silently getting a wrong score.
    """
    buckets: dict[str, list[int]] = {}
    for i, h in enumerate(source_hashes):
        buckets.setdefault(h, []).append(i)
    cursor: dict[str, int] = {}
    out = np.empty(len(target_hashes), dtype=np.asarray(values).dtype)
    for j, h in enumerate(target_hashes):
        rows = buckets.get(h)
        if not rows:
            raise UnknownKey(f"example hash {h} (target position {j}) has no score")
        k = cursor.get(h, 0)
        out[j] = values[rows[min(k, len(rows) - 1)]]
        cursor[h] = k + 1
    return out
