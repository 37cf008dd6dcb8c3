"""Saving and loading pruned models: a ``save_pretrained`` folder (safetensors) + ``prunekit.json``.

Outputs are written atomically: everything goes to a temporary folder beside the target, which is
renamed into place only when complete. The rules for ``--out`` (:func:`check_output`):

* never the input model folder, a folder inside it, or a folder that contains it;
* never prunekit's cache (``$PRUNEKIT_CACHE``), a folder inside it or one that contains it;
* never the current directory, the home directory or a folder that contains either;
* an existing folder is replaced only with ``overwrite=True`` and only when prunekit wrote it: it
  holds a ``prunekit.json`` manifest and nothing but the files a saved model, its tokenizer and
  the manifest consist of (:data:`OWN_FILES`);
* the parent must be writable, checked before any work starts.

Temporary folders are named ``.NAME.tmp-PID-XXXXXXXX`` (and ``.NAME.old-PID-XXXXXXXX`` while a
replaced output is moved aside). A save removes those left in the same parent by processes that
are no longer running (a killed run), and says so in a warning.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from prunekit import __version__
from prunekit.core.errors import PrunekitError

MANIFEST = "prunekit.json"
# Every file a prunekit output may hold: the manifest, what transformers' save_pretrained writes for
# a causal LM (config, generation config, safetensors weights, sharded or not), the tokenizer files
# and PEFT's two adapter files.
OWN_FILES = re.compile(
    r"prunekit\.json|config\.json|generation_config\.json"
    r"|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json"
    r"|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|added_tokens\.json"
    r"|vocab\.json|vocab\.txt|merges\.txt|tokenizer\.model|spiece\.model|sentencepiece\.bpe\.model"
    r"|chat_template\.jinja|chat_template\.json"
    r"|adapter_config\.json|adapter_model\.safetensors"  # a pruned LoRA adapter (prunekit delta --lora)
)
OWN_FOLDERS = {"additional_chat_templates": re.compile(r"[^/\\]+\.jinja"),
               "report": re.compile(r"report\.(md|html|json)|[a-z0-9_-]+\.png")}  # prunekit report / prune --report
TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d{1,10})-[a-z0-9_]{8}")

log = logging.getLogger("prunekit.core.io")


class OutputExistsError(PrunekitError):
    """A refused ``--out``: it exists, it is not ours to replace, or it is not writable."""


def describe_error(err: BaseException, limit: int = 240) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters), for one-line errors."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0].strip()}" if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both resolved)."""
    return path == folder or folder in path.parents


def foreign_content(folder: Path) -> str | None:
    """Why ``folder`` is not an output prunekit wrote (None when it is)."""
    manifest = folder / MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        return f"has no {MANIFEST}, so prunekit did not write it"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return f"has a {MANIFEST} that is not valid JSON"
    if not isinstance(data, dict) or "prunekit_version" not in data:
        return f"has a {MANIFEST} that prunekit did not write (no prunekit_version)"
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            return f"holds the link {entry.name!r}, which prunekit does not write"
        if entry.is_dir():
            pattern = OWN_FOLDERS.get(entry.name)
            inner = sorted(entry.iterdir())
            bad = [p.name for p in inner if pattern is None or p.is_symlink() or not p.is_file()
                   or not pattern.fullmatch(p.name)]
            if pattern is None or bad:
                return f"holds the folder {entry.name!r}, which prunekit does not write"
        elif not entry.is_file() or not OWN_FILES.fullmatch(entry.name):
            return f"holds {entry.name!r}, which prunekit does not write"
    return None


def _check_writable(out: Path, shown: str) -> None:
    """Create and remove a probe folder where the output will go (its nearest existing ancestor)."""
    place = out.parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise OutputExistsError(f"--out {shown!r} cannot be created: {str(place)!r} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=place)
        os.rmdir(probe)
    except OSError as err:
        raise OutputExistsError(f"--out {shown!r} is not writable: cannot create a folder in {str(place)!r} "
                                f"({err.strerror or describe_error(err)}); choose a writable place") from None


def check_output(out: str | Path, overwrite: bool = False, inputs: tuple = ()) -> Path:
    """Validate an output folder before any work is done (the rules are in the module docstring)."""
    from prunekit.assets import cache_dir

    shown = str(out)
    out = Path(out).expanduser().resolve()
    for source in inputs:
        if not source or not Path(str(source)).expanduser().exists():
            continue
        src = Path(str(source)).expanduser().resolve()
        if out == src:
            raise OutputExistsError(f"--out {shown!r} is the input model folder; choose another folder")
        if _within(out, src):
            raise OutputExistsError(f"--out {shown!r} is inside the input model folder {str(src)!r}; "
                                    "choose a folder outside it")
        if _within(src, out):
            raise OutputExistsError(f"--out {shown!r} contains the input model folder {str(src)!r}; "
                                    "choose a folder that does not")
    cache = cache_dir().expanduser().resolve()
    if _within(out, cache) or _within(cache, out):
        raise OutputExistsError(f"--out {shown!r} is, contains or lies inside prunekit's cache {str(cache)!r} "
                                "(PRUNEKIT_CACHE); choose a folder outside it")
    for what, place in (("current directory", Path.cwd()), ("home directory", Path.home())):
        place = place.resolve()
        if _within(place, out):
            raise OutputExistsError(f"--out {shown!r} is or contains the {what} {str(place)!r}; "
                                    "choose a new folder for the output")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"--out {shown!r} already exists; pass --overwrite to replace it "
                                    "(only a folder prunekit wrote is replaced)")
        if not out.is_dir():
            raise OutputExistsError(f"--out {shown!r} exists and is not a folder; --overwrite replaces only "
                                    "a folder prunekit wrote")
        problem = foreign_content(out)
        if problem:
            raise OutputExistsError(f"--overwrite refused: --out {shown!r} {problem}; it replaces only a "
                                    f"folder prunekit wrote ({MANIFEST} + model and tokenizer files)")
    _check_writable(out, shown)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True  # exists but not ours (EPERM), or not a pid at all: leave it alone
    return True


def remove_stale_temporaries(parent: str | Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` folders in ``parent`` whose process is dead."""
    removed = []
    try:
        entries = sorted(Path(parent).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_NAME.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
            log.warning("prunekit: removed %s, a temporary folder left by process %d, which is no longer running",
                        entry, pid)
    return removed


@contextmanager
def atomic_output(out: str | Path, overwrite: bool = False, source: str | None = None) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; it becomes ``out`` when the ``with`` block ends
    without error (the rules of :func:`check_output` apply; see :func:`atomic_folder`)."""
    with atomic_folder(check_output(out, overwrite, inputs=(source,))) as tmp:
        yield tmp


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` (already checked by the caller) that becomes ``out`` when the
    ``with`` block ends without error, with the usual permissions (not mkdtemp's 0700).

    A failure while writing (disk full, permissions, Ctrl-C) leaves nothing behind: the temporary
    folder is removed and a replaced output is put back; OS errors become one-line PrunekitErrors."""
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out.parent)
        tmp = output_temporary(out)
        yield tmp
        _move_into_place(tmp, out)
    except (OSError, SafetensorError) as err:  # safetensors reports its I/O failures (disk full) as its own error
        full = getattr(err, "errno", None) == errno.ENOSPC or f"os error {errno.ENOSPC})" in str(err)
        why = "the disk is full" if full else (getattr(err, "strerror", None) or describe_error(err))
        raise PrunekitError(f"could not save to {str(out)!r}: {why}; nothing was written") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def output_temporary(out: Path) -> Path:
    """A new temporary folder beside ``out`` (``.NAME.tmp-PID-XXXXXXXX``) that will be renamed to ``out``:
    it gets the usual permissions of a new folder (0755 at umask 022), not the 0700 mkdtemp gives."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_manifest(folder: str | Path, manifest: dict | None = None, source: str | None = None) -> None:
    """``prunekit.json`` in ``folder``: prunekit's version, the source model and ``manifest``."""
    data = {"prunekit_version": __version__, "source_model": source, **(manifest or {})}
    (Path(folder) / MANIFEST).write_text(json.dumps(data, indent=2, default=str))


def save_pretrained(model, out: str | Path, tokenizer=None, manifest: dict | None = None,
                    overwrite: bool = False, source: str | None = None) -> Path:
    """Write ``model`` (and tokenizer) to ``out`` atomically with a ``prunekit.json`` manifest
    (see :func:`atomic_output`)."""
    with atomic_output(out, overwrite, source) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_manifest(tmp, manifest, source)
    return Path(out).expanduser().resolve()


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    out.rename(old / out.name)
    try:
        tmp.rename(out)
    except BaseException:
        (old / out.name).rename(out)  # put the previous output back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def read_small_text(path: str | Path, what: str, limit: int, hint: str = "") -> str:
    """The UTF-8 text of a small input file (a recipe, a keep list): a missing, unreadable, larger than
    ``limit`` bytes (``hint`` says why that is too large) or non-UTF-8 file is a one-line error
    naming ``what`` and the file."""
    shown = str(path)
    path = Path(path).expanduser()
    if not path.is_file():
        raise PrunekitError(f"{what} {shown!r} does not exist")
    try:
        with path.open("rb") as f:
            raw = f.read(limit + 1)
        if len(raw) > limit:
            raise PrunekitError(f"{what} {shown!r} is larger than {limit:,} bytes{hint}")
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PrunekitError(f"cannot read {what} {shown!r}: {' '.join(str(err).split())[:120]}") from None


def read_manifest(path: str | Path) -> dict:
    """The ``prunekit.json`` of a folder ({} if it has none); a tampered one is a one-line error."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise PrunekitError(f"{str(file)!r} is not valid JSON ({describe_error(err)}); restore the folder "
                            f"or delete {MANIFEST}") from None
    if not isinstance(data, dict):
        raise PrunekitError(f"{str(file)!r} must hold a JSON object, got {type(data).__name__}")
    shapes = data.get("layer_shapes")
    if shapes is not None:
        check_layer_shapes(shapes, file)
    return data


def check_layer_shapes(shapes, file) -> None:
    """``{"linears": {name: [out, in, has_bias]}, "heads": {name: n}}`` with positive integer sizes."""
    where = f"layer_shapes in {str(file)!r}"

    def bad(what: str) -> PrunekitError:
        return PrunekitError(f"{where}: {what}; the file was not written by prunekit as it is")

    def positive(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 31

    if not isinstance(shapes, dict):
        raise bad(f"must be an object, got {type(shapes).__name__}")
    for key in shapes:
        if key not in ("linears", "heads"):
            raise bad(f"unknown key {str(key)[:40]!r} (choices: heads, linears)")
    linears, heads = shapes.get("linears", {}), shapes.get("heads", {})
    if not isinstance(linears, dict) or not isinstance(heads, dict):
        raise bad("linears and heads must be objects")
    for name, value in linears.items():
        if not (isinstance(value, list) and len(value) == 3 and positive(value[0]) and positive(value[1])
                and isinstance(value[2], bool)):
            raise bad(f"linears[{name[:80]!r}] must be [out, in, has_bias], got {str(value)[:60]}")
    for name, value in heads.items():
        if not positive(value):
            raise bad(f"heads[{name[:80]!r}] must be a positive integer, got {str(value)[:60]}")


def read_layer_shapes(path: str | Path) -> dict:
    """The per-layer shapes of a folder: ``prunekit_layer_shapes`` in its ``config.json`` (where
    structured pruning writes them, so they survive ``save_pretrained``), else ``layer_shapes`` in
    its ``prunekit.json`` (folders written before); {} for a folder the config describes."""
    from prunekit.core.shapes import CONFIG_KEY

    file = Path(path) / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        config = {}  # an unreadable config is reported by the loader itself
    shapes = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    if shapes is not None:
        check_layer_shapes(shapes, file)
        return shapes
    return read_manifest(path).get("layer_shapes") or {}


def folder_kind(path: str | Path) -> str:
    """How a model folder loads: ``"plain"`` (``from_pretrained``), ``"per-layer"`` (per-layer widths:
    :func:`load_pretrained`) or ``"decilm"`` (the DeciLM / Nemotron-NAS layout, read by
    :func:`load_pretrained` as the Llama model it describes)."""
    if not Path(path).is_dir():
        return "plain"
    if read_decilm(path)[0] is not None:
        return "decilm"
    return "per-layer" if read_layer_shapes(path) else "plain"


def size_mismatch_hint(path: str | Path, err: BaseException) -> PrunekitError | None:
    """A one-line error for weights whose shapes differ from what ``config.json`` builds (a pruned
    folder whose per-layer widths were dropped), else None."""
    text = str(err)
    if "size mismatch" not in text and "ignore_mismatched_sizes" not in text:
        return None
    return PrunekitError(f"the weights in {str(path)!r} do not have the shapes its config.json describes and the config "
                         "records no per-layer widths (prunekit_layer_shapes); if prunekit pruned it with per-layer "
                         "widths, the widths were dropped from config.json: restore them (prunekit.json keeps a copy "
                         "under layer_shapes)")


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a folder written by prunekit with the stock transformers classes (no remote code).

    Folders with per-layer widths (``prunekit_layer_shapes`` in ``config.json``, or ``layer_shapes``
    in the ``prunekit.json`` of older folders; written by structured pruning) load in three steps:
    ``from_pretrained`` loads everything whose shape the config describes (with transformers' own
    key renames and weight tying); the recorded linears are replaced by modules of the recorded
    shapes; their weights and biases are copied from the safetensors files, and a missing one is an
    error. Recorded shapes that do not match the tensors in the files are a one-line error. The
    loaded model's config carries the shapes, so its own ``save_pretrained`` writes a folder that
    loads here again. A DeciLM / Nemotron-NAS folder (``prunekit export --format decilm``) loads as
    the Llama model it describes (:func:`prunekit.core.shapes.decilm_to_llama`).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from prunekit.core.shapes import set_config_shapes

    config, shapes = read_decilm(path)
    if config is None:
        shapes = read_layer_shapes(path)
    if not shapes:
        try:
            return AutoModelForCausalLM.from_pretrained(str(path), config=config, dtype=dtype).eval()
        except RuntimeError as err:
            hint = size_mismatch_hint(path, err)
            if hint is None:
                raise
            raise hint from None
    from safetensors import safe_open

    from prunekit.core.shapes import apply_layer_shapes

    files, sizes = {}, {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                files[key] = file
                sizes[key] = list(f.get_slice(key).get_shape())
    for name, (out, inp, bias) in shapes.get("linears", {}).items():
        key = f"{name}.weight"
        if key not in sizes:
            raise PrunekitError(f"{str(path)!r} has no tensor {key!r} although layer_shapes lists {name!r}")
        if sorted(sizes[key]) != sorted([out, inp]) or (bias and sizes.get(f"{name}.bias") != [out]):
            raise PrunekitError(f"layer_shapes in {str(path)!r} say {name!r} is {[out, inp, bias]} but the "
                                f"weights file holds {sizes[key]}; the manifest does not belong to these weights")
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the mismatched blocks are expected: they are rebuilt below
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), config=config, dtype=dtype,
                                                     ignore_mismatched_sizes=True)
    finally:
        logging.set_verbosity(verbosity)
    try:
        apply_layer_shapes(model, shapes)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise PrunekitError(f"layer_shapes in {str(path)!r} do not fit the model ({describe_error(err)})") from None
    with torch.no_grad():
        for name in shapes.get("linears", {}):
            module = model.get_submodule(name)
            for kind in ("weight", "bias"):
                param = getattr(module, kind)
                key = f"{name}.{kind}"
                if param is None:
                    continue
                if key not in files:
                    raise PrunekitError(f"{str(path)!r} has no tensor {key!r} although layer_shapes lists {name!r}")
                with safe_open(str(files[key]), framework="pt") as f:
                    tensor = f.get_tensor(key)
                if tensor.shape != param.shape:
                    raise PrunekitError(f"layer_shapes in {str(path)!r} make {key!r} {list(param.shape)} but the "
                                        f"weights file holds {list(tensor.shape)}")
                param.copy_(tensor)
    set_config_shapes(model.config, shapes)  # so that the model's own save_pretrained keeps them
    return model.to(dtype).eval()


def read_decilm(path: str | Path):
    """(LlamaConfig, per-layer shapes) for a DeciLM / Nemotron-NAS folder, (None, {}) for any other."""
    from prunekit.core.shapes import DECILM_TYPE, decilm_to_llama

    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None, {}
    if not isinstance(config, dict) or config.get("model_type") != DECILM_TYPE:
        return None, {}
    from transformers import LlamaConfig

    llama, shapes = decilm_to_llama(config)
    return LlamaConfig.from_dict(llama), shapes
