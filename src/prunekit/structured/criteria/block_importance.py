"""Block importance for depth pruning: block influence (Men et al. 2024, "ShortGPT", eq. 1).

    BI_i = 1 - E_tokens[ cos(x_i, x_{i+1}) ]

where x_i is the input and x_{i+1} the output hidden state of block i on calibration data. Blocks
that barely turn the hidden state are removed first.
"""

from __future__ import annotations

import torch


def block_influence(similarity: list[float]) -> torch.Tensor:
    return 1.0 - torch.tensor(similarity, dtype=torch.float64)


def blocks_to_remove(scores: torch.Tensor, n: int) -> list[int]:
    """Indices of the ``n`` blocks with the lowest scores (the least important), in order."""
    return sorted(torch.argsort(scores)[:n].tolist())
