"""Perplexity on a fixed protocol: exp(mean over windows of the per-window mean NLL).

The default protocol cuts the text's token stream into non-overlapping windows of ``seqlen``
tokens (the first ``nwindows`` of them, or all), and scores the ``seqlen - 1`` predictions of each
window. With a ``stride`` below ``seqlen`` the windows overlap (sliding-window perplexity, as in
the transformers docs): window ``w`` starts at ``w * stride``; the first scores all of its
predictions, every later one only its last ``stride`` tokens, each of them seen with at least
``seqlen - stride`` tokens of context; the result is exp(total NLL / scored tokens).

Next to it, per byte and per word (as lm-eval reports for wikitext), which compare models whose
vocabularies differ: over exactly the scored tokens, ``nll`` (their total NLL in nats), ``bytes`` (UTF-8
bytes) and ``words`` (whitespace-separated words) of the text they decode to; ``bits_per_byte`` =
nll / (ln 2 * bytes), ``byte_perplexity`` = 2 ** bits_per_byte, ``word_perplexity`` = exp(nll / words).

The text is the tokenizer's own decoding of the scored tokens (special tokens skipped, no clean-up of
spaces), decoded in maximal runs that are contiguous in the text, not token by token: a byte-level BPE
token can hold part of a UTF-8 character and a SentencePiece token its leading space, so only a whole
run decodes to exactly the bytes of its text, for any tokenizer (no table of per-token byte lengths
to keep in step with each tokenizer's decoder), and words are counted in the same text. The strided
protocol scores one run (every token after the first, each once, however the windows overlap); so
does the default one when each window starts with the tokenizer's prefix (Gemma's ``<bos>``), whose
windows score the text's tokens end to end. Without a prefix (SmolLM2, Qwen) the first token of each
window is not scored, so each window's scored tokens are a run of their own; a word cut by that gap
counts on both sides (at most one word per window), and a multi-byte character cut there decodes as
U+FFFD, three bytes (Brown is ASCII: never there). Without a tokenizer (token tensors) only ``nll``
is known.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prunekit.core.data_sources import (DEFAULT_EVALUATION, TextTooShortError, bos_prefix, check_count,
                                        describe_source, evaluation_windows, token_stream)
from prunekit.core.errors import PrunekitError


@dataclass
class PerplexityResult:
    perplexity: float
    tokens: int  # tokens in the windows
    seconds: float
    windows: int
    scored: int = 0  # predictions scored (the first token of a window has none; overlaps are scored once)
    stride: int | None = None  # None: non-overlapping windows
    nll: float = 0.0  # total NLL of the scored predictions, in nats
    bytes: int | None = None  # UTF-8 bytes of the text the scored tokens decode to (None: no tokenizer)
    words: int | None = None  # whitespace-separated words of that text
    bits_per_byte: float | None = None  # nll / (ln 2 * bytes)
    byte_perplexity: float | None = None  # 2 ** bits_per_byte
    word_perplexity: float | None = None  # exp(nll / words)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def token_nlls(model, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> torch.Tensor:
    """Next-token NLL of every prediction of each window: shape (windows, seqlen - 1). Calibration windows
    padded with ``PAD`` (one per sample) are run with their attention mask; a prediction of padding is NaN."""
    from prunekit.core.data_sources import split_padding

    device = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, len(windows), batch_size), desc="eval", disable=not progress, leave=False):
        ids, mask = split_padding(windows[i : i + batch_size])
        ids = ids.to(device)
        extra = {} if mask is None else {"attention_mask": mask.to(device)}
        logits = model(input_ids=ids, use_cache=False, **extra).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").cpu()
        out.append(nll if mask is None else nll.masked_fill(mask[:, 1:] == 0, float("nan")))
    return torch.cat(out)


def window_nlls(model, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> torch.Tensor:
    """Mean next-token NLL of each window (row of ``windows``; of its real tokens when padded)."""
    nlls = token_nlls(model, windows, batch_size, progress)
    return nlls.nanmean(dim=1) if bool(nlls.isnan().any()) else nlls.mean(dim=1)


def strided_windows(stream: torch.Tensor, seqlen: int, stride: int, nwindows: int | None) -> torch.Tensor:
    """Windows of ``seqlen`` tokens starting every ``stride`` tokens (the first ``nwindows``, or all)."""
    count = 1 + (len(stream) - seqlen) // stride
    count = count if nwindows is None else min(count, nwindows)
    return torch.stack([stream[w * stride: w * stride + seqlen] for w in range(count)])


def scored_runs(windows: torch.Tensor, stride: int | None, prefix: int = 0) -> list[torch.Tensor]:
    """The scored tokens of ``windows`` as runs that are contiguous in the text, in order.

    ``stride`` None: each window scores all but its first token; ``prefix`` > 0 says every window is
    that many prefix tokens followed by the next stretch of the text, so the stretches make one run
    (the prefix's own scored tokens, special tokens, decode to nothing). With a ``stride`` the first
    window scores all but its first token, each later one its last ``min(stride, seqlen - 1)``:
    together the text after its first token, once."""
    if stride is not None:
        new = min(stride, windows.shape[1] - 1)
        return [torch.cat([windows[0, 1:], windows[1:, -new:].reshape(-1)])]
    if prefix:
        return [windows[:, prefix:].reshape(-1)]
    return list(windows[:, 1:])


def text_size(tokenizer, runs: list[torch.Tensor]) -> tuple[int, int]:
    """(UTF-8 bytes, whitespace-separated words) of the text ``runs`` decode to, each run decoded whole."""
    nbytes = words = 0
    for run in runs:
        text = tokenizer.decode(run.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        nbytes += len(text.encode("utf-8"))
        words += len(text.split())
    return nbytes, words


def _per_byte(result: PerplexityResult, tokenizer, runs: list[torch.Tensor]) -> None:
    """Fill in ``bytes``, ``words`` and the per-byte and per-word measures of ``result`` (a tokenizer needed)."""
    if tokenizer is None or not hasattr(tokenizer, "decode"):
        return
    result.bytes, result.words = text_size(tokenizer, runs)
    if result.bytes:
        result.bits_per_byte = result.nll / (math.log(2) * result.bytes)
        result.byte_perplexity = _exp(result.nll / result.bytes)  # = 2 ** bits_per_byte
    if result.words:
        result.word_perplexity = _exp(result.nll / result.words)


def _exp(x: float) -> float:
    """exp(x), infinite where the float overflows (past ~709; strict JSON then writes null)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _check(model, windows: torch.Tensor) -> None:
    length = windows.shape[-1] if windows.dim() == 2 else 0
    if len(windows) == 0 or length < 2:
        raise PrunekitError(f"nothing to evaluate: {tuple(windows.shape)} windows; need at least one window "
                            "of 2 or more tokens")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and not isinstance(limit, bool) and length > limit:
        raise PrunekitError(f"seqlen {length} is longer than the model's {limit} positions "
                            f"(max_position_embeddings); use at most {limit}")


def perplexity(model, tokenizer=None, text=DEFAULT_EVALUATION, nwindows: int | None = 32, seqlen: int = 512,
               batch_size: int = 1, progress: bool = False, stride: int | None = None) -> PerplexityResult:
    """Perplexity of ``model`` on ``text`` (any text source; see :mod:`prunekit.core.data_sources`).

    ``nwindows=None`` takes the whole stream; ``stride`` (1 to ``seqlen``) makes the windows overlap.
    Windows need 2 to ``max_position_embeddings`` tokens; anything else is a one-line error."""
    prefix = 0
    if stride is None or stride == seqlen:
        windows, stride = evaluation_windows(text, tokenizer, nwindows, seqlen), None
        if not isinstance(text, torch.Tensor):  # the prefix evaluation_windows put before each window
            head = bos_prefix(tokenizer)
            prefix = len(head) if 0 < len(head) < seqlen - 1 else 0
    else:
        check_count(seqlen, "seqlen", 2)
        check_count(stride, "stride")
        if stride > seqlen:
            raise PrunekitError(f"stride {stride} is longer than the window ({seqlen}); use 1 to {seqlen}")
        if nwindows is not None:
            check_count(nwindows, "nwindows")
        stream = token_stream(text, tokenizer, None if nwindows is None else (nwindows - 1) * stride + seqlen)
        if len(stream) < seqlen:
            raise TextTooShortError(f"text {describe_source(text)!r} has {len(stream)} tokens, shorter than one "
                                    f"window of {seqlen}")
        windows = strided_windows(stream, seqlen, stride, nwindows)
    _check(model, windows)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    nlls = token_nlls(model, windows, batch_size, progress)
    model.train(was_training)
    if stride is None:  # every window scores all its predictions: the mean of window means
        value, scored, total = math.exp(nlls.mean(dim=1).mean().item()), nlls.numel(), nlls.double().sum().item()
    else:
        new = min(stride, windows.shape[1] - 1)
        picked = torch.cat([nlls[0], nlls[1:, -new:].reshape(-1)])
        value, scored, total = math.exp(picked.double().mean().item()), picked.numel(), picked.double().sum().item()
    result = PerplexityResult(perplexity=value, tokens=int(windows.numel()), seconds=time.perf_counter() - start,
                              windows=len(windows), scored=scored, stride=stride, nll=total)
    _per_byte(result, tokenizer, scored_runs(windows, stride, prefix))
    return result
