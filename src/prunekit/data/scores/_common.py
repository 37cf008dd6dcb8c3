"""Shared helpers for model-based scores: batched forward passes and averaging."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from prunekit.core.errors import PrunekitError

HIGHER_IS_HARDER = "higher=harder"


@torch.inference_mode()
def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


@torch.inference_mode()
def batched_logits_and_embeddings(
    model: nn.Module, x: torch.Tensor, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and penultimate features (``model.embed``) for models whose last layer is ``Linear``."""
    was_training = model.training
    model.eval()
    head = last_linear(model)
    logits, feats = [], []
    for i in range(0, len(x), batch_size):
        h = model.embed(x[i : i + batch_size]).float()
        feats.append(h)
        logits.append(head(h).float())
    model.train(was_training)
    return torch.cat(logits), torch.cat(feats)


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's final ``nn.Linear`` (the classifier head)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise PrunekitError("model has no nn.Linear layer")
    return linears[-1]


def average_over(models: Sequence[nn.Module], score_fn: Callable[[nn.Module], np.ndarray]) -> np.ndarray:
    """Mean of a per-example score over several models (seeds and/or checkpoints)."""
    if not models:
        raise PrunekitError("need at least one model to average over")
    return np.mean(np.stack([np.asarray(score_fn(m), dtype=np.float64) for m in models]), axis=0)
