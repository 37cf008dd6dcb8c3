"""Run folders and checkpoints of the data commands: resumable, checked, and never executable.

* **Checkpoints** (``student.ckpt``, ``teacher.ckpt``, ``work/seedN.ckpt``, cached teacher logits,
  VoG snapshots) are :mod:`prunekit.core.checkpoint` files (safetensors + JSON): reading one never
  runs code, so a file planted in a run folder is at worst refused.
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

from prunekit.core.checkpoint import compare_config, first_line
from prunekit.core.errors import PrunekitError
from prunekit.core.io import TEMP_NAME

RUN_FILE = "run.json"
RUN_FORMAT = 1


# ---------------------------------------------------------------------------------- run identity
def fingerprint(values: Iterable | np.ndarray | torch.Tensor) -> str:
    """A short content hash (16 hex digits) of an integer array, a tensor or a list of strings."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        data = np.ascontiguousarray(values.astype(np.int64) if values.dtype.kind in "iub" else values).tobytes()
    else:
        data = "\n".join(str(v) for v in values).encode()
    return hashlib.sha1(data).hexdigest()[:16]


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
        raise PrunekitError(f"{flag} {str(folder)!r} has an unreadable {RUN_FILE} ({first_line(exc)}); "
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
        if any(not TEMP_NAME.fullmatch(f.name) for f in p.iterdir()):  # a killed first write is ours
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
    from prunekit.core.io import atomic_file, write_json

    # claimed, never replaced: a run started meanwhile in the same folder keeps its run.json
    with atomic_file(p / RUN_FILE, lambda path: "belongs to another run", flag=flag) as tmp:
        write_json(tmp, {"command": command, "format": RUN_FORMAT, "config": config})
    return p
