"""Checkpoint files: nested tensors and plain values in one safetensors file; reading one never runs code.

Every tensor and numpy array goes in the safetensors tensor section; everything else (numbers, strings,
booleans, ``None``, lists, tuples, dicts) is plain JSON in the header metadata. A file planted where a
checkpoint is expected is at worst refused with one line. Used for training checkpoints
(:class:`prunekit.core.train.Checkpoint`), cached teacher logits and score snapshots.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.core.errors import PrunekitError

_META_KEY = "prunekit_state"


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()  # own storage: safetensors refuses shared ones
        return {"$tensor": name}
    if isinstance(obj, np.ndarray):
        return {"$ndarray": _encode(torch.from_numpy(np.array(obj, copy=True)), tensors)["$tensor"]}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"$items": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (tensors and plain values only)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, value), = obj.items()
        if tag == "$tensor":
            return tensors[value]
        if tag == "$ndarray":
            return tensors[value].numpy()
        if tag == "$tuple":
            return tuple(_decode(v, tensors) for v in value)
        if tag == "$items":
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_state(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` (tensors, arrays and plain values, nested) as one safetensors file."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta = json.dumps(_encode(state, tensors))
    save_file(tensors, str(path), metadata={"format": "pt", _META_KEY: meta})


def save_state_atomic(path: str | Path, state: Mapping[str, Any]) -> None:
    """:func:`save_state` to ``path`` through a temporary file beside it: a crash leaves the old file or the new."""
    from prunekit.core.io import replace_file

    with replace_file(path) as tmp:
        save_state(tmp, state)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_state`; anything else is a one-line :class:`PrunekitError`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get(_META_KEY)
            if meta is None:
                raise PrunekitError("no prunekit state in its header")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safetensors handles are not iterable
        state = _decode(json.loads(meta), tensors)
        if not isinstance(state, dict):
            raise PrunekitError("its state is not a mapping")
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, the answer is one line
        raise PrunekitError(f"{str(path)!r} is not a prunekit checkpoint ({first_line(exc)}); "
                            "delete it to start that part of the run over") from None
    return state


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def compare_config(recorded: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first key (in ``new``'s order, then ``recorded``'s) whose value differs, or ``None``."""
    missing = "<not set>"
    for key in [*new, *(k for k in recorded if k not in new)]:
        old, now = recorded.get(key, missing), new.get(key, missing)
        if old != now:
            return key, old, now
    return None
