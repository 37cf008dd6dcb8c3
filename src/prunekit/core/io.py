"""Saving and loading pruned models, and the one writer every prunekit output goes through.

Every output (a model folder, a report folder, a selection file, a checkpoint) is written into a
temporary folder beside its target and moved into place only when complete (:func:`atomic_output`
for folders, :func:`atomic_file` for files). The rules for ``--out`` (:func:`check_output`) hold
both before any work starts and again at the moment of the move:

* never the input model folder, a folder inside it, or a folder that contains it;
* never prunekit's cache (``$PRUNEKIT_CACHE``), a folder inside it or one that contains it;
* never the current directory, the home directory or a folder that contains either;
* an existing target is replaced only with ``overwrite=True`` and only when prunekit wrote it: a
  folder holds a ``prunekit.json`` manifest and nothing but the files a saved model, its tokenizer,
  an adapter or a report consist of (:data:`OWN_FILES`); a file passes the ``owned`` check of the
  command that writes it (a selection, a sparse delta, a score report ...);
* a name must fit the filesystem, and the parent must be writable.

A target that appears while the work runs (a second run, or a user creating the folder) is never
swapped out: the move re-checks the rules and claims the name without replacing (``mkdir`` or
``link``, which fail when the name exists), so a refused move leaves the other folder as it is and
reports the output as not written.

Temporary folders are named ``.prunekit-tmp-PID-XXXXXXXX`` and hold a marker file
(:data:`MARKER`) that names the folder itself. A later save removes such folders in the same parent
when their process is no longer running *and* the marker is there and names them: a folder
prunekit did not make is never removed, whatever its name.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from prunekit import __version__
from prunekit.core.errors import PrunekitError
from prunekit.core.jsonout import dumps_json

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
    r"|report\.(md|html|json)|(layers|quality|speed)\.png"  # prunekit report --out
)
OWN_FOLDERS = {"additional_chat_templates": re.compile(r"[^/\\]+\.jinja"),
               "report": re.compile(r"prunekit\.json|report\.(md|html|json)|(layers|quality|speed)\.png")}  # prunekit report / prune --report
TEMP_PREFIX = ".prunekit-tmp-"
TEMP_NAME = re.compile(r"\.prunekit-tmp-(?P<pid>\d{1,10})-[a-z0-9_]{8}")
MARKER = ".prunekit-temporary"  # inside every temporary folder; its text names the folder

log = logging.getLogger("prunekit.core.io")

Owned = Callable[[Path], "str | None"]  # why an existing file is not prunekit's to replace (None: it is)


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


def _resolve(out: str | Path, flag: str) -> Path:
    """``out`` made absolute with its links resolved; a link loop or an over-long name is a one-line error."""
    shown = str(out)
    if not shown.strip():
        raise OutputExistsError(f"{flag} is empty; give a path")
    try:
        path = Path(out).expanduser().resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python 3.11)
        why = getattr(err, "strerror", None) or "it is a loop of symbolic links"
        raise OutputExistsError(f"{flag} {shown!r} cannot be resolved: {why}; give another path") from None
    for part in path.parts[1:]:
        if len(os.fsencode(part)) > _name_max(path):
            raise OutputExistsError(f"{flag} {shown!r} has a name of {len(os.fsencode(part))} bytes "
                                    f"({part[:24]}...); this filesystem allows {_name_max(path)}")
    return path


def _name_max(path: Path) -> int:
    """The longest file name (bytes) the filesystem of ``path``'s nearest existing ancestor allows."""
    place = path
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        return int(os.pathconf(place if place.is_dir() else place.parent, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _check_writable(out: Path, shown: str, flag: str) -> None:
    """Create and remove a probe folder where the output will go (its nearest existing ancestor)."""
    place = out.parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise OutputExistsError(f"{flag} {shown!r} cannot be created: {str(place)!r} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=place)
        os.rmdir(probe)
    except OSError as err:
        raise OutputExistsError(f"{flag} {shown!r} is not writable: cannot create a folder in {str(place)!r} "
                                f"({err.strerror or describe_error(err)}); choose a writable place") from None


def check_output(out: str | Path, overwrite: bool = False, inputs: tuple = (), owned: Owned | None = None,
                 flag: str = "--out", probe: bool = True) -> Path:
    """Validate an output (a folder, or a file when ``owned`` is given) before any work is done, and
    again at the move (the rules are in the module docstring); returns the resolved path."""
    from prunekit.core.paths import cache_dir

    shown = str(out)
    out = _resolve(out, flag)
    for source in inputs:
        if not source or not Path(str(source)).expanduser().exists():
            continue
        src = Path(str(source)).expanduser().resolve()
        if out == src:
            raise OutputExistsError(f"{flag} {shown!r} is the input model folder; choose another folder")
        if _within(out, src):
            raise OutputExistsError(f"{flag} {shown!r} is inside the input model folder {str(src)!r}; "
                                    "choose a folder outside it")
        if _within(src, out):
            raise OutputExistsError(f"{flag} {shown!r} contains the input model folder {str(src)!r}; "
                                    "choose a folder that does not")
    cache = cache_dir().expanduser().resolve()
    if _within(out, cache) or _within(cache, out):
        raise OutputExistsError(f"{flag} {shown!r} is, contains or lies inside prunekit's cache {str(cache)!r} "
                                "(PRUNEKIT_CACHE); choose a folder outside it")
    for what, place in (("current directory", Path.cwd()), ("home directory", Path.home())):
        place = place.resolve()
        if _within(place, out):
            raise OutputExistsError(f"{flag} {shown!r} is or contains the {what} {str(place)!r}; "
                                    "choose a new folder for the output")
    if out.exists() or out.is_symlink():
        _check_replaceable(out, shown, overwrite, owned, flag)
    if probe:
        _check_writable(out, shown, flag)
    return out


def _check_replaceable(out: Path, shown: str, overwrite: bool, owned: Owned | None, flag: str) -> None:
    """An existing ``out`` may be replaced: ``overwrite`` is given and prunekit wrote it."""
    kind = "folder" if owned is None else "file"
    if not overwrite:
        raise OutputExistsError(f"{flag} {shown!r} already exists; pass --overwrite to replace it "
                                f"(only a {kind} prunekit wrote is replaced)")
    if owned is None:
        if out.is_symlink() or not out.is_dir():
            raise OutputExistsError(f"{flag} {shown!r} exists and is not a folder; --overwrite replaces only "
                                    "a folder prunekit wrote")
        problem = foreign_content(out)
        if problem:
            raise OutputExistsError(f"--overwrite refused: {flag} {shown!r} {problem}; it replaces only a "
                                    f"folder prunekit wrote ({MANIFEST} + model and tokenizer files)")
        return
    problem = "is a link" if out.is_symlink() else ("is not a file" if not out.is_file() else owned(out))
    if problem:
        raise OutputExistsError(f"--overwrite refused: {flag} {shown!r} {problem}; it replaces only a file "
                                "prunekit wrote")


# ------------------------------------------------------------------------------ temporary folders
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True  # exists but not ours (EPERM), or not a pid at all: leave it alone
    return True


def _marked(folder: Path) -> bool:
    """Whether ``folder`` holds prunekit's marker naming it (so prunekit made it)."""
    marker = folder / MARKER
    try:
        return (not marker.is_symlink() and marker.is_file() and marker.stat().st_size < 512
                and marker.read_text(encoding="utf-8") == _marker_text(folder.name))
    except (OSError, UnicodeDecodeError):
        return False


def _marker_text(name: str) -> str:
    return f"prunekit temporary folder {name}\n"


def remove_stale_temporaries(parent: str | Path) -> list[Path]:
    """Remove the temporary folders in ``parent`` that prunekit made (marker inside, naming the folder)
    for a process that is no longer running; anything else is left alone, whatever its name."""
    removed = []
    try:
        entries = sorted(Path(parent).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_NAME.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir() or not _marked(entry):
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


def _temporary(parent: Path) -> Path:
    """A new marked temporary folder in ``parent`` (``.prunekit-tmp-PID-XXXXXXXX``)."""
    for _ in range(100):
        folder = parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        (folder / MARKER).write_text(_marker_text(folder.name), encoding="utf-8")
        return folder
    raise PrunekitError(f"cannot create a temporary folder in {str(parent)!r}")


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (the few renames of a move are not cut in half)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in caught[:1]:
            signal.raise_signal(signum)


# ------------------------------------------------------------------------------ the writer
@contextmanager
def _staged(targets: list[Path], recheck: Callable[[], None], where: Path) -> Iterator[Path]:
    """A marked temporary folder in ``where``; at the end of the ``with`` block every entry written
    into it must be named after one of ``targets``, which it then becomes (rules re-checked first).

    A failure while writing (disk full, permissions, Ctrl-C, SIGTERM) leaves nothing behind: the
    temporary folder is removed and a replaced output is put back; OS errors become one-line errors."""
    tmp = None
    try:
        where.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(where)
        tmp = _temporary(where)
        yield tmp
        names = {t.name for t in targets}
        extra = sorted(p.name for p in tmp.iterdir() if p.name != MARKER and p.name not in names)
        if extra:
            raise RuntimeError(f"the writer of {str(targets[0])!r} left {extra} beside its outputs")
        with _signals_deferred():
            recheck()
            _move_all(tmp, [t for t in targets if (tmp / t.name).exists() or (tmp / t.name).is_symlink()])
    except (OSError, SafetensorError) as err:  # safetensors reports its I/O failures (disk full) as its own error
        raise PrunekitError(f"could not save to {str(targets[0])!r}: {_io_reason(err)}; nothing was written") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _io_reason(err: BaseException) -> str:
    full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or f"os error {errno.ENOSPC})" in str(err) \
        or "No space left" in str(err)
    return "the disk is full" if full else (getattr(err, "strerror", None) or describe_error(err))


def _move_all(tmp: Path, targets: list[Path]) -> None:
    """Move ``tmp/<name>`` to each target; if one move fails, the ones before are undone."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for i, target in enumerate(targets):
            done.append((target, _move_into_place(tmp / target.name, target, tmp / f".old-{i}")))
    except BaseException:
        for target, old in reversed(done):
            _undo(target, old)
        raise
    for _, old in done:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()


def _claim(staged: Path, target: Path) -> None:
    """Rename ``staged`` to ``target`` only if ``target`` does not exist: a folder by creating the
    name first (``mkdir`` fails on an existing name; rename then replaces that empty folder), a file
    by a hard link (fails on an existing name). FileExistsError when someone else holds the name."""
    if staged.is_dir() and not staged.is_symlink():
        target.mkdir()
        try:
            staged.rename(target)
        except OSError:
            target.rmdir()
            raise
    else:
        os.link(staged, target, follow_symlinks=False)
        staged.unlink()


def _move_into_place(staged: Path, target: Path, aside: Path) -> Path | None:
    """Put ``staged`` at ``target``; an existing target (checked replaceable) is first moved to
    ``aside`` and returned, so that it can be removed once every move succeeded, or put back."""
    old = None
    if target.exists() or target.is_symlink():
        old = aside
        target.rename(old)
    try:
        _claim(staged, target)
    except FileExistsError:
        if old is not None:
            _restore_beside(old, target)
        raise OutputExistsError(f"--out {str(target)!r} was created by someone else while prunekit worked; "
                                "it was left as it is and nothing was written") from None
    except BaseException:
        if old is not None:
            _restore_beside(old, target)
        raise
    return old


def _restore_beside(old: Path, target: Path) -> None:
    try:
        _claim(old, target) if old.is_dir() else old.rename(target)
    except OSError:
        log.warning("prunekit: the previous %s is kept at %s (its name was taken meanwhile)", target, old)


def _undo(target: Path, old: Path | None) -> None:
    """Take a moved output away again and put back what it replaced."""
    shutil.rmtree(target, ignore_errors=True) if target.is_dir() and not target.is_symlink() else \
        target.unlink(missing_ok=True)
    if old is not None:
        _restore_beside(old, target)


@contextmanager
def atomic_output(out: str | Path, overwrite: bool = False, source: str | None = None, *, inputs: tuple = (),
                  flag: str = "--out") -> Iterator[Path]:
    """A new folder to write into (inside a temporary folder beside ``out``); it becomes ``out`` when
    the ``with`` block ends without error. The rules of :func:`check_output` hold at the start and
    again at the move; ``source`` and ``inputs`` are the input folders ``out`` must stay clear of."""
    inputs = (source, *inputs)
    target = check_output(out, overwrite, inputs=inputs, flag=flag)
    with _staged([target], lambda: check_output(out, overwrite, inputs=inputs, flag=flag, probe=False),
                 target.parent) as tmp:
        payload = tmp / target.name
        payload.mkdir()
        yield payload


@contextmanager
def atomic_file(out: str | Path, owned: Owned, overwrite: bool = False, *, also: Iterable[str] = (),
                inputs: tuple = (), flag: str = "--out") -> Iterator[Path]:
    """A temporary path to write the file ``out`` at (and its companions named in ``also``, beside it:
    ``path.with_name(name)``); they replace the targets when the ``with`` block ends without error.
    ``owned(path)`` says why an existing target is not prunekit's (None: it is, and ``overwrite``
    replaces it); the rules of :func:`check_output` hold at the start and again at the move."""
    target = check_output(out, overwrite, inputs=inputs, owned=owned, flag=flag)
    companions = [target.with_name(name) for name in also]
    for c in companions:
        check_output(c, overwrite, inputs=inputs, owned=owned, flag=flag, probe=False)

    def recheck() -> None:
        for path in (target, *companions):
            check_output(path, overwrite, inputs=inputs, owned=owned, flag=flag, probe=False)

    with _staged([target, *companions], recheck, target.parent) as tmp:
        yield tmp / target.name


@contextmanager
def cache_entry(target: str | Path) -> Iterator[Path]:
    """A new folder for an entry of prunekit's cache (a converted model, a benchmark's fine-tuned
    pair); it becomes ``target`` when the ``with`` block ends without error. The cache is prunekit's
    own, so the ``--out`` rules do not apply; an entry that another process finished meanwhile is
    kept and this one dropped."""
    target = Path(target).expanduser().absolute()

    def recheck() -> None:
        if target.exists() or target.is_symlink():
            raise _Taken

    try:
        with _staged([target], recheck, target.parent) as tmp:
            payload = tmp / target.name
            payload.mkdir()
            yield payload
    except _Taken:
        log.warning("prunekit: %s was made by another process meanwhile; keeping that one", target)


class _Taken(Exception):
    """A cache entry that exists already (made by another process)."""


@contextmanager
def replace_file(path: str | Path) -> Iterator[Path]:
    """A temporary path for a file that replaces ``path`` whatever it holds, for the files prunekit
    keeps inside a folder it made and owns (a run folder's checkpoints, a cache entry): a crash
    leaves the old file or the new one, never half of one."""
    target = Path(path).absolute()
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent)
        tmp = _temporary(target.parent)
        yield tmp / target.name
        with _signals_deferred():
            os.replace(tmp / target.name, target)
    except (OSError, SafetensorError) as err:
        raise PrunekitError(f"could not save {str(target)!r}: {_io_reason(err)}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def scratch_folder(prefix: str = "prunekit-", where: str | Path | None = None) -> Iterator[Path]:
    """A private temporary folder for work files, removed at the end; never an output. In the
    system's temp space, or a marked temporary folder in ``where`` (for files too large for it)."""
    if where is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)
        return
    where = Path(where)
    where.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(where)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``: a path inside a folder the writer gave (staging, scratch)."""
    Path(path).write_text(text, encoding="utf-8")


def write_json(path: str | Path, data, indent: int | None = 2) -> None:
    """Write ``data`` as strict JSON (non-finite floats as null) to a path the writer gave."""
    write_text(path, dumps_json(data, indent=indent, default=str) + "\n")


def write_manifest(folder: str | Path, manifest: dict | None = None, source: str | None = None) -> None:
    """``prunekit.json`` in ``folder``: prunekit's version, the source model and ``manifest``."""
    data = {"prunekit_version": __version__, "source_model": source, **(manifest or {})}
    write_json(Path(folder) / MANIFEST, data)


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


_OWN_OPTIONS = ("config", "use_safetensors", "weights_only", "ignore_mismatched_sizes", "output_loading_info")


def _load_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    """``dtype`` as ``from_pretrained`` takes it: ``"auto"`` or a floating torch dtype (also by name)."""
    value = getattr(torch, dtype, None) if isinstance(dtype, str) and dtype != "auto" else dtype
    if value == "auto" or (isinstance(value, torch.dtype) and value.is_floating_point):
        return value
    raise PrunekitError(f"load_pretrained: unknown dtype {dtype!r}; expected 'auto' (the checkpoint's own), "
                        "a floating torch dtype or its name ('bfloat16', 'float16', 'float32')")


def load_pretrained(path: str | Path, dtype: torch.dtype | str = "auto", trust_pickle_weights: bool = False,
                    device_map=None, **kwargs):
    """Load a folder written by prunekit with the stock transformers classes (no remote code).

    ``dtype`` is ``"auto"`` (default: the checkpoint's own, so a bf16 folder stays bf16) or a torch
    dtype (or its name); ``device_map`` and ``kwargs`` go to transformers' ``from_pretrained`` as
    they are (``device_map="auto"``, ``attn_implementation=...``; ``trust_remote_code`` is never set
    unless you pass it). The options prunekit sets itself (``config``, ``use_safetensors``,
    ``weights_only``, ``ignore_mismatched_sizes``, ``output_loading_info``) are refused.

    Folders with per-layer widths (``prunekit_layer_shapes`` in ``config.json``, or ``layer_shapes``
    in the ``prunekit.json`` of older folders; written by structured pruning) load in three steps:
    ``from_pretrained`` loads everything whose shape the config describes (with transformers' own
    key renames and weight tying); the recorded linears are replaced by modules of the recorded
    shapes; their weights and biases are copied from the safetensors files, and a missing one is an
    error. Recorded shapes that do not match the tensors in the files are a one-line error. The
    loaded model's config carries the shapes, so its own ``save_pretrained`` writes a folder that
    loads here again. A DeciLM / Nemotron-NAS folder (``prunekit export --format decilm``) loads as
    the Llama model it describes (:func:`prunekit.core.shapes.decilm_to_llama`). Weights are read
    from safetensors only, unless ``trust_pickle_weights`` (:mod:`prunekit.core.inputs`).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from prunekit.core.inputs import check_links, check_weight_files, from_pretrained_options
    from prunekit.core.shapes import set_config_shapes

    dtype = _load_dtype(dtype)
    own = sorted(k for k in kwargs if k in _OWN_OPTIONS)
    if own:
        raise PrunekitError(f"load_pretrained sets {own[0]!r} itself; leave it out (it accepts dtype, device_map "
                            "and any other from_pretrained option)")
    check_links(path)
    check_weight_files(path, trust_pickle_weights=trust_pickle_weights)
    options = {**kwargs, **from_pretrained_options(trust_pickle_weights)}
    if device_map is not None:
        options["device_map"] = device_map
    config, shapes = read_decilm(path)
    if config is None:
        shapes = read_layer_shapes(path)
    if not shapes:
        try:
            return AutoModelForCausalLM.from_pretrained(str(path), config=config, dtype=dtype, **options).eval()
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
                                                     ignore_mismatched_sizes=True, **options)
    finally:
        logging.set_verbosity(verbosity)
    if dtype == "auto":  # the checkpoint's own, as the embedding (never rebuilt below) was loaded
        dtype = model.get_input_embeddings().weight.dtype
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

    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None, {}
    return decilm_from_dict(config)


def decilm_from_dict(config) -> tuple:
    """:func:`read_decilm` on a config.json already read."""
    from prunekit.core.shapes import DECILM_TYPE, decilm_to_llama

    if not isinstance(config, dict) or config.get("model_type") != DECILM_TYPE:
        return None, {}
    from transformers import LlamaConfig

    llama, shapes = decilm_to_llama(config)
    return LlamaConfig.from_dict(llama), shapes
