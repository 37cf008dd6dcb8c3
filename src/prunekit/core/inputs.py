"""What prunekit accepts in an input folder (a model or an adapter): checked before any work.

- **Weights are safetensors.** Pickle-format weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) are
  read only with the explicit opt-in :data:`PICKLE_FLAG` (``trust_pickle_weights=True`` in Python),
  and then with ``torch.load(weights_only=True)``; without it a folder that holds no safetensors
  file is a one-line error that names the flag and how to convert the folder once.
- **No file comes in from outside.** A symbolic link in the folder that points outside it is refused,
  naming the link and its target: everything read from an input folder (a tokenizer, a chat template,
  a generation config) may be copied into an output, so a link could carry any file the user can
  read into a folder they share. Links inside the folder are fine, and so is a Hugging Face hub cache
  snapshot (``.../models--ORG--NAME/snapshots/HASH/``), whose files are links into the repository's
  own ``blobs/`` folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunekit.core.errors import PrunekitError

PICKLE_FLAG = "--trust-pickle-weights"
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
SAFETENSORS = "*.safetensors"
CONVERT = ("python -c \"from transformers import AutoModelForCausalLM as M; "
           "M.from_pretrained('IN').save_pretrained('OUT', safe_serialization=True)\", then copy the tokenizer files")


def add_trust_pickle_arg(parser) -> None:
    """The one opt-in flag of every command that loads a causal LM."""
    parser.add_argument(PICKLE_FLAG, dest="trust_pickle_weights", action="store_true",
                        help="also read a model folder whose weights are only pickle files (pytorch_model.bin, *.pt, "
                        "*.pth, *.ckpt), with torch.load(weights_only=True); default: safetensors only")


def check_weight_files(folder: str | Path, shown: str | None = None, trust_pickle_weights: bool = False) -> None:
    """A model folder's weights are safetensors, or pickle files the caller opted into; else a one-line
    error (a folder with no weights at all included). A hub id (not a folder) is checked by the loader,
    which asks transformers for safetensors only."""
    path = Path(folder)
    if not path.is_dir():
        return
    shown = shown or str(folder)
    if any(path.glob(SAFETENSORS)):
        return
    pickles = sorted(p.name for pattern in PICKLE_PATTERNS for p in path.glob(pattern))
    if not pickles:
        raise PrunekitError(f"model folder {shown!r} has no weights (no *.safetensors file)")
    if not trust_pickle_weights:
        raise PrunekitError(f"model folder {shown!r} holds only pickle weights ({pickles[0]}): pass "
                            f"{PICKLE_FLAG} if you trust them, or convert it once: {CONVERT}")


def from_pretrained_options(trust_pickle_weights: bool = False) -> dict:
    """The keyword arguments of transformers' ``from_pretrained`` that read weights as the rule says."""
    return {"weights_only": True} if trust_pickle_weights else {"use_safetensors": True}


def _hub_blobs(root: str) -> str | None:
    """The ``blobs`` folder a Hugging Face hub cache snapshot's links may point into, else None."""
    snapshots = os.path.dirname(root)
    repo = os.path.dirname(snapshots)
    if os.path.basename(snapshots) == "snapshots" and os.path.basename(repo).startswith(("models--", "datasets--")):
        return os.path.join(repo, "blobs")
    return None


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_links(folder: str | Path, shown: str | None = None, what: str = "model folder") -> None:
    """No symbolic link under ``folder`` (files and sub-folders, not following links) leaves it; a
    one-line error names the first that does and its target."""
    root = os.path.realpath(folder)
    if not os.path.isdir(root):
        return
    allowed = [root] + [b for b in (_hub_blobs(root),) if b]
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            entry = os.path.join(dirpath, name)
            if not os.path.islink(entry):
                continue
            target = os.path.realpath(entry)
            if not any(_inside(target, a) for a in allowed):
                relative = os.path.relpath(entry, root)
                raise PrunekitError(f"{what} {shown or str(folder)!r}: {relative!r} is a symbolic link to {target!r}, "
                                    "outside the folder; prunekit reads no file from elsewhere (it could be copied "
                                    "into an output): copy the file into the folder instead")
