"""Label-free uncertainty scores from predicted probabilities (Coleman et al., "Selection via
Proxy", ICLR 2020): entropy, margin and least confidence. All are oriented higher = harder.

* entropy: ``-sum_j p_j log p_j``
* margin: ``1 - (p_(1) - p_(2))`` (one minus the gap between the two most likely classes)
* least confidence: ``1 - max_j p_j``
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from prunekit.data.scores._common import average_over, batched_logits

NAMES = ("entropy", "margin", "least_confidence")
DIRECTION = "higher=harder"


def uncertainty_from_logits(logits: torch.Tensor, kind: str) -> np.ndarray:
    probs = logits.float().softmax(dim=1)
    if kind == "entropy":
        return -(probs * probs.clamp_min(1e-12).log()).sum(dim=1).numpy()
    if kind == "margin":
        top2 = probs.topk(2, dim=1).values
        return (1 - (top2[:, 0] - top2[:, 1])).numpy()
    if kind == "least_confidence":
        return (1 - probs.max(dim=1).values).numpy()
    raise ValueError(f"uncertainty kind {kind!r} is not one of {', '.join(NAMES)}")


def uncertainty_scores(
    models: nn.Module | Sequence[nn.Module], x: torch.Tensor, kind: str = "entropy", batch_size: int = 500
) -> np.ndarray:
    """An uncertainty score averaged over ``models``."""
    models = [models] if isinstance(models, nn.Module) else list(models)
    return average_over(models, lambda m: uncertainty_from_logits(batched_logits(m, x, batch_size), kind))
