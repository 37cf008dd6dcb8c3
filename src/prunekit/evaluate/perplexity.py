"""Perplexity on a fixed protocol: exp(mean over windows of the per-window mean NLL).

The default protocol cuts the text's token stream into non-overlapping windows of ``seqlen``
tokens (the first ``nwindows`` of them, or all), and scores the ``seqlen - 1`` predictions of each
window. With a ``stride`` below ``seqlen`` the windows overlap (sliding-window perplexity, as in
the transformers docs): window ``w`` starts at ``w * stride``; the first scores all of its
predictions, every later one only its last ``stride`` tokens, each of them seen with at least
``seqlen - stride`` tokens of context; the result is exp(total NLL / scored tokens).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prunekit.core.data_sources import (DEFAULT_EVALUATION, TextTooShortError, check_count, describe_source,
                                        evaluation_windows, token_stream)
from prunekit.core.errors import PrunekitError


@dataclass
class PerplexityResult:
    perplexity: float
    tokens: int  # tokens in the windows
    seconds: float
    windows: int
    scored: int = 0  # predictions scored (the first token of a window has none; overlaps are scored once)
    stride: int | None = None  # None: non-overlapping windows

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def token_nlls(model, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> torch.Tensor:
    """Next-token NLL of every prediction of each window: shape (windows, seqlen - 1)."""
    device = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, len(windows), batch_size), desc="eval", disable=not progress, leave=False):
        ids = windows[i : i + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        out.append(F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").cpu())
    return torch.cat(out)


def window_nlls(model, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> torch.Tensor:
    """Mean next-token NLL of each window (row of ``windows``)."""
    return token_nlls(model, windows, batch_size, progress).mean(dim=1)


def strided_windows(stream: torch.Tensor, seqlen: int, stride: int, nwindows: int | None) -> torch.Tensor:
    """Windows of ``seqlen`` tokens starting every ``stride`` tokens (the first ``nwindows``, or all)."""
    count = 1 + (len(stream) - seqlen) // stride
    count = count if nwindows is None else min(count, nwindows)
    return torch.stack([stream[w * stride: w * stride + seqlen] for w in range(count)])


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
    if stride is None or stride == seqlen:
        windows, stride = evaluation_windows(text, tokenizer, nwindows, seqlen), None
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
        value, scored = math.exp(nlls.mean(dim=1).mean().item()), nlls.numel()
    else:
        new = min(stride, windows.shape[1] - 1)
        picked = torch.cat([nlls[0], nlls[1:, -new:].reshape(-1)])
        value, scored = math.exp(picked.double().mean().item()), picked.numel()
    return PerplexityResult(perplexity=value, tokens=int(windows.numel()), seconds=time.perf_counter() - start,
                            windows=len(windows), scored=scored, stride=stride)
