"""Perplexity on a fixed protocol: exp(mean over windows of the per-window mean NLL)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prunekit.core.errors import PrunekitError
from prunekit.core.data_sources import DEFAULT_EVALUATION, evaluation_windows


@dataclass
class PerplexityResult:
    perplexity: float
    tokens: int
    seconds: float
    windows: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def window_nlls(model, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> torch.Tensor:
    """Mean next-token NLL of each window (row of ``windows``)."""
    device = next(model.parameters()).device
    out = []
    for i in tqdm(range(0, len(windows), batch_size), desc="eval", disable=not progress, leave=False):
        ids = windows[i : i + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").mean(dim=1)
        out.append(nll.cpu())
    return torch.cat(out)


def perplexity(model, tokenizer=None, text=DEFAULT_EVALUATION, nwindows: int | None = 32, seqlen: int = 512,
               batch_size: int = 1, progress: bool = False) -> PerplexityResult:
    """Perplexity of ``model`` on ``text`` (any text source; see :mod:`prunekit.core.data_sources`).

    Windows need 2 to ``max_position_embeddings`` tokens; anything else is a one-line error."""
    windows = evaluation_windows(text, tokenizer, nwindows, seqlen)
    length = windows.shape[-1] if windows.dim() == 2 else 0
    if len(windows) == 0 or length < 2:
        raise PrunekitError(f"nothing to evaluate: {tuple(windows.shape)} windows; need at least one window "
                            "of 2 or more tokens")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and not isinstance(limit, bool) and length > limit:
        raise PrunekitError(f"seqlen {length} is longer than the model's {limit} positions "
                            f"(max_position_embeddings); use at most {limit}")
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    nlls = window_nlls(model, windows, batch_size, progress)
    model.train(was_training)
    return PerplexityResult(
        perplexity=math.exp(nlls.mean().item()),
        tokens=int(windows.numel()),
        seconds=time.perf_counter() - start,
        windows=len(windows),
    )
