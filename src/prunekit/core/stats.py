"""What calibration data tells about a layer: running statistics of its inputs.

One statistics object serves every method that reads calibration inputs: Wanda's and GBLM's
activation norms, SparseGPT's Hessian, and the structured criteria's channel statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerStats:
    """Running statistics of a layer's calibration inputs X (tokens x in).

    ``sq_norms[j]`` = sum over tokens of X[:, j]^2 (Wanda's ||X_j||^2); ``full_hessian()`` = X^T X
    (SparseGPT's H, before the 2/n scaling that cancels in the solver). X^T X is symmetric, so only
    its upper block-triangle is accumulated (``gram_upper``): 8 row blocks took ~59% of a full
    product's time, which matters because the Hessians cost almost as much as the calibration forward.
    """

    in_features: int
    want_hessian: bool = False
    tokens: int = 0
    samples: int = 0
    sq_norms: torch.Tensor | None = None
    gram_upper: torch.Tensor | None = None  # X^T X on and above the diagonal blocks; below: unused
    row_blocks: int = 8

    def add(self, x: torch.Tensor, samples: int) -> None:
        x = x.reshape(-1, self.in_features).float()
        if self.sq_norms is None:
            self.sq_norms = torch.zeros(self.in_features, dtype=torch.float32, device=x.device)
        self.sq_norms += x.pow(2).sum(dim=0)
        if self.want_hessian:
            self._add_gram(x)
        self.tokens += x.shape[0]
        self.samples += samples

    def _add_gram(self, x: torch.Tensor) -> None:
        d = self.in_features
        if self.gram_upper is None:
            self.gram_upper = torch.zeros(d, d, dtype=torch.float32, device=x.device)
        step = -(-d // self.row_blocks)
        for i in range(0, d, step):  # row block i, columns i.. : H[i:i+step, i:] += X_i^T X_{i:}
            self.gram_upper[i : i + step, i:].addmm_(x[:, i : i + step].t(), x[:, i:])

    def full_hessian(self) -> torch.Tensor:
        """X^T X as a new dense symmetric matrix (the upper block-triangle mirrored)."""
        upper = self.gram_upper.triu()
        return upper + upper.triu(1).t()

    def column_norms(self) -> torch.Tensor:
        """sqrt of the per-sample mean of ||X_j||^2, the activation norm used by Wanda and GBLM."""
        return (self.sq_norms / max(self.samples, 1)).sqrt()
