"""What a run will hold in memory, estimated from its settings before anything is allocated.

A setting that cannot fit is refused in one line (exit 2) that gives the estimate, the memory this
machine has available and the flag to lower, instead of being OOM-killed half an hour later
(``--nsamples 1000000000`` was killed at 21.7 GB; ``train --width 1000000`` asked for 72 TB). The
estimates are lower bounds of what grows with the settings and are compared with what is available now
(``psutil`` if installed, else ``MemAvailable`` of ``/proc/meminfo``; no refusal where neither is
known), so a run that is refused could not have finished.

* calibration (:func:`calibration_bytes`): the block runner of :mod:`prunekit.core.calibration`
  holds every window's hidden states between blocks (a block's inputs and the outputs made so far)
  and, inside a block, what each chunk holds parked at a layer (at least its residual stream and the
  MLP's inner activation): the lock-step runner parks *every* chunk, the others one at a time. It also runs one thread per chunk (at most
  :data:`MAX_LOCKSTEP_CHUNKS`).
* training (:func:`training_bytes`): the parameters with their gradients and two Adam moments, and
  a batch's activations kept for the backward pass.
* text (:func:`text_read_limit`): a calibration or evaluation file is read only as far as the tokens
  asked for need; a text read whole (vocabulary pruning, ``eval --nwindows all``) must fit
  :data:`TEXT_MEMORY_FACTOR` times its size.
* threads (:func:`check_threads`): at most :func:`max_threads`, a few per core.
"""

from __future__ import annotations

import math
import os

from prunekit.core.errors import PrunekitError

MAX_LOCKSTEP_CHUNKS = 4096  # the lock-step runner's threads, one per chunk of calibration windows
THREADS_PER_CORE = 4  # --threads beyond this many per core only oversubscribes (100,000 crashed OpenMP)
TEXT_BYTES_PER_TOKEN = 64  # a generous bound: English BPE text is 3-5 bytes per token
TEXT_MIN_READ = 64 << 20  # a calibration file up to this size is read whole (as before bounded reading)
TEXT_MEMORY_FACTOR = 8  # bytes of memory per byte of text tokenized (the text, its str, the ids)
_MEMINFO = "/proc/meminfo"


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now, or None where this cannot be known."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open(_MEMINFO, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def human(size: float) -> str:
    """``1536`` -> ``'1.5 kB'``; ``7.2e13`` -> ``'72.0 TB'`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(size) < 1000 or unit == "PB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} PB"


def check_fits(estimate: float, what: str, lower: str) -> None:
    """A one-line error when ``estimate`` bytes exceed the memory available now: ``what`` needs about
    X but this machine has Y available; lower ``lower``."""
    available = available_memory()
    if available is not None and estimate > available:
        raise PrunekitError(f"{what} would hold about {human(estimate)} but this machine has {human(available)} of "
                            f"memory available (MemAvailable); lower {lower}")


def check_threads(value, flag: str = "--threads") -> int | None:
    """``value`` (None = torch's default) as a thread count: an integer from 1 to :func:`max_threads`."""
    if value is None:
        return None
    limit = max_threads()
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise PrunekitError(f"{flag} must be an integer from 1 to {limit} ({THREADS_PER_CORE} per core of the "
                            f"{os.cpu_count() or 1} here), got {value!r}")
    return value


def max_threads() -> int:
    return THREADS_PER_CORE * (os.cpu_count() or 1)


# ------------------------------------------------------------------ calibration

def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _first(config, names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def token_floats(config) -> int:
    """Floats a chunk parked at the MLP's down projection surely holds per token: the residual stream
    (hidden) and the projection's input (the MLP's inner width). A lower bound: the attention's q/k/v and
    the normed inputs held at other layers are left out, so the estimate never refuses a run that fits."""
    text = _text_config(config)
    hidden = _first(text, ("hidden_size", "n_embd", "d_model"), 1)
    inner = _first(text, ("intermediate_size", "n_inner", "ffn_dim"), 4 * hidden)
    return hidden + inner


def calibration_bytes(config, nsamples: int, seqlen: int, chunk_size: int = 8, runner: str = "lockstep",
                      value_bytes: int = 4) -> int:
    """Bytes the block runner holds for ``nsamples`` windows of ``seqlen`` tokens (see the module docstring)."""
    text = _text_config(config)
    hidden = _first(text, ("hidden_size", "n_embd", "d_model"), 1)
    heads = _first(text, ("num_attention_heads", "n_head"), 1)
    tokens = nsamples * seqlen
    parked = tokens if runner == "lockstep" else min(chunk_size, nsamples) * seqlen
    between = 2 * tokens * hidden  # the blocks' inputs and the outputs made so far
    attention = min(chunk_size, nsamples) * heads * seqlen * seqlen  # one chunk's attention weights, computing
    return (between + parked * token_floats(config) + attention) * value_bytes + tokens * 8 * 2  # + the token ids


def value_bytes(weights_dtype, compute_dtype: str | None = None) -> int:
    """Bytes per activation: the compute dtype's if one is named, else the weights' (4 when unknown)."""
    import torch

    if compute_dtype not in (None, "auto"):
        return getattr(torch, compute_dtype).itemsize
    return weights_dtype.itemsize if isinstance(weights_dtype, torch.dtype) else 4


def check_calibration(config, calibration, weights_dtype=None) -> None:
    """The calibration of a :class:`~prunekit.core.recipe.CalibrationConfig` fits in memory (before any
    weight loads): its windows, the runner's activations and (lock-step) one thread per chunk."""
    nsamples, seqlen, chunk = calibration.nsamples, calibration.seqlen, calibration.chunk_size
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (nsamples, seqlen, chunk)):
        return  # the calibration's own checks name the bad value
    estimate = calibration_bytes(config, nsamples, seqlen, chunk, calibration.runner,
                                 value_bytes(weights_dtype, calibration.compute_dtype))
    check_fits(estimate, f"calibration on {nsamples} x {seqlen} tokens ({calibration.runner} runner)",
               "--nsamples or --seqlen" + (" (or use --runner two-pass)" if calibration.runner == "lockstep" else ""))
    chunks = math.ceil(nsamples / chunk)
    if calibration.runner == "lockstep" and chunks > MAX_LOCKSTEP_CHUNKS:
        raise PrunekitError(f"--nsamples {nsamples} in chunks of {chunk} makes {chunks} chunks, and the lock-step "
                            f"runner runs one thread per chunk (at most {MAX_LOCKSTEP_CHUNKS}); raise --chunk-size, "
                            "lower --nsamples or use --runner two-pass")


def check_windows(nsamples: int, seqlen: int) -> None:
    """The token windows themselves fit (``nsamples`` x ``seqlen`` int64 ids and their start offsets):
    the check of :func:`prunekit.core.data_sources.calibration_windows`, for callers of the Python API."""
    check_fits(nsamples * (seqlen + 1) * 8 * 2, f"{nsamples} x {seqlen} calibration token windows",
               "nsamples or seqlen")


# ------------------------------------------------------------------ text files

def text_read_limit(tokens: int | None) -> int | None:
    """How many bytes of a text file to read for ``tokens`` tokens (None: the whole file)."""
    return None if tokens is None else max(TEXT_MIN_READ, tokens * TEXT_BYTES_PER_TOKEN)


def check_text_fits(size: int, shown: str) -> None:
    """A text file read whole must fit in memory while it is tokenized."""
    check_fits(size * TEXT_MEMORY_FACTOR, f"tokenizing the whole of {shown!r} ({human(size)})",
               "the size of the text (give a shorter file, or a window count instead of all)")


# ------------------------------------------------------------------ training

def training_bytes(parameters: int, activation_floats: int, batch_size: int) -> int:
    """float32 parameters with gradients and two Adam moments, plus one batch's activations kept for
    the backward pass (``activation_floats`` per example, twice: the values and their gradients)."""
    return 4 * (4 * parameters + 2 * activation_floats * batch_size)
