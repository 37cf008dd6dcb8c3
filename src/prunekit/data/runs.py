"""Run folders and checkpoints of the data commands: resumable, checked, and never executable.

* **Checkpoints** (``student.ckpt``, ``teacher.ckpt``, ``work/seedN.ckpt``, cached teacher logits,
  VoG snapshots) are safetensors files: every tensor and numpy array goes in the tensor section,
  everything else (numbers, strings, booleans, ``None``, lists, dicts) is plain JSON in the header
  metadata. Reading one never runs code, so a file planted in a run folder is at worst refused.
* **Run folders** (``data score --out``, ``data train --out``) hold a ``run.json`` with the command and
  its full configuration. A rerun resumes only the same configuration; any other is refused with
  one line naming the first key that differs, its recorded value and the new one.
* **Output locations** are checked before any work starts: the folder (or its nearest existing
  parent) must be a writable folder, and an existing ``--out`` must be empty or a run folder of the
  same command. Nothing prunekit did not write is ever written into or replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.core.errors import PrunekitError

RUN_FILE = "run.json"
RUN_FORMAT = 1
_META_KEY = "prunekit_state"


# ---------------------------------------------------------------------------------- checkpoints
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


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_state`; anything else is a one-line :class:`PrunekitError`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get(_META_KEY)
            if meta is None:
                raise ValueError("no prunekit state in its header")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safetensors handles are not iterable
        state = _decode(json.loads(meta), tensors)
        if not isinstance(state, dict):
            raise ValueError("its state is not a mapping")
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, the answer is one line
        raise PrunekitError(f"{str(path)!r} is not a prunekit checkpoint ({_first_line(exc)}); "
                            "delete it to start that part of the run over") from None
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def fingerprint(values: Iterable | np.ndarray | torch.Tensor) -> str:
    """A short content hash (16 hex digits) of an integer array, a tensor or a list of strings."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        data = np.ascontiguousarray(values.astype(np.int64) if values.dtype.kind in "iub" else values).tobytes()
    else:
        data = "\n".join(str(v) for v in values).encode()
    return hashlib.sha1(data).hexdigest()[:16]


def compare_config(recorded: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first key (in ``new``'s order, then ``recorded``'s) whose value differs, or ``None``."""
    missing = "<not set>"
    for key in [*new, *(k for k in recorded if k not in new)]:
        old, now = recorded.get(key, missing), new.get(key, missing)
        if old != now:
            return key, old, now
    return None


# ---------------------------------------------------------------------------------- output locations
def _exists(path: Path, flag: str, shown: str) -> bool:
    try:
        return path.exists()
    except OSError as exc:
        raise PrunekitError(f"{flag} {shown!r} cannot be checked: {exc.strerror or exc}") from None


def check_writable(path: str | Path, flag: str = "--out") -> Path:
    """``path`` (file or folder) can be created or written: its nearest existing parent is a writable folder."""
    shown = str(path)
    if not shown.strip():
        raise PrunekitError(f"{flag} is empty; give a path")
    p = Path(os.path.abspath(shown))
    if _exists(p, flag, shown):
        anchor = p if p.is_dir() else p.parent
    else:
        anchor = p.parent
        while not _exists(anchor, flag, shown):
            anchor = anchor.parent
        if not anchor.is_dir():
            raise PrunekitError(f"{flag} {shown!r} cannot be created: {str(anchor)!r} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise PrunekitError(f"{flag} {shown!r} is not writable: no write permission in {str(anchor)!r}")
    return p


def read_run(folder: str | Path, flag: str = "--out") -> dict[str, Any] | None:
    """The ``run.json`` of ``folder`` (``None`` if there is none); a broken one is a one-line error."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise PrunekitError(f"{flag} {str(folder)!r} has an unreadable {RUN_FILE} ({_first_line(exc)}); "
                            "use another folder or delete it") from None
    if not (isinstance(data, dict) and isinstance(data.get("command"), str) and isinstance(data.get("config"), dict)):
        raise PrunekitError(f"{flag} {str(folder)!r} has a {RUN_FILE} that prunekit did not write "
                            "(no command/config); use another folder or delete it")
    return data


def check_run_folder(folder: str | Path, command: str, flag: str = "--out") -> Path:
    """Check, writing nothing, that ``folder`` can hold a ``command`` run: new, empty, or one of ours."""
    shown = str(folder)
    p = check_writable(folder, flag)
    if not p.exists():
        return p
    if not p.is_dir():
        raise PrunekitError(f"{flag} {shown!r} exists and is not a folder; give a new or empty folder")
    run = read_run(p, flag)
    if run is None:
        if any(not f.name.startswith(f".{RUN_FILE}.tmp-") for f in p.iterdir()):  # a killed first write is ours
            raise PrunekitError(f"{flag} {shown!r} is not empty and is not a prunekit '{command}' run folder "
                                f"(no {RUN_FILE}); give a new or empty folder")
        return p
    if run["command"] != command:
        raise PrunekitError(f"{flag} {shown!r} is a prunekit '{run['command']}' run folder, not a '{command}' one; "
                            "give a new or empty folder")
    return p


def open_run(folder: str | Path, command: str, config: Mapping[str, Any], flag: str = "--out") -> Path:
    """Check ``folder`` and resume (same configuration) or start a run there; refuse any other configuration.

    On success the folder exists and holds ``run.json`` with ``config``; nothing is written otherwise.
    """
    p = check_run_folder(folder, command, flag)
    config = json.loads(json.dumps(dict(config)))  # the form it has once read back (tuples -> lists, ...)
    run = read_run(p, flag) if p.is_dir() else None
    if run is not None:
        diff = compare_config(run["config"], config)
        if diff is not None:
            key, old, new = diff
            raise PrunekitError(f"{flag} {str(folder)!r} holds a '{command}' run with {key}={old!r}, but this "
                                f"command has {key}={new!r}; rerun with the same settings to resume, "
                                "or give another folder")
        return p
    p.mkdir(parents=True, exist_ok=True)
    tmp = p / f".{RUN_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"command": command, "format": RUN_FORMAT, "config": config}, indent=2) + "\n")
    tmp.replace(p / RUN_FILE)
    return p
