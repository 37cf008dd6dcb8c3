"""Block importance for depth pruning: block influence (Men et al. 2024, "ShortGPT", eq. 1).

    BI_i = 1 - E_tokens[ cos(x_i, x_{i+1}) ]

where x_i is the input and x_{i+1} the output hidden state of block i on calibration data. Blocks
that barely turn the hidden state are removed first.
"""

from __future__ import annotations

import torch


def block_influence(similarity: list[float]) -> torch.Tensor:
    return 1.0 - torch.tensor(similarity, dtype=torch.float64)


def blocks_to_remove(similarity: list[float], n: int, generator: torch.Generator | None = None,
                     random: bool = False) -> list[int]:
    """Indices of the ``n`` least important blocks (or ``n`` random blocks for the baseline)."""
    if random:
        return sorted(torch.randperm(len(similarity), generator=generator)[:n].tolist())
    return sorted(torch.argsort(block_influence(similarity))[:n].tolist())
