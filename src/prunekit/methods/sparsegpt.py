"""SparseGPT (Frantar & Alistarh 2023, "Massive Language Models Can Be Accurately Pruned in One-Shot").

Layer-wise reconstruction: minimize ||W X - W' X||^2 with W' sparse. With H = X X^T, removing
weight w_q and updating the not-yet-processed weights of its row by -w_q / [H^-1]_qq * H^-1_{:,q}
is the optimal brain surgeon step (Eq. 3). SparseGPT processes columns left to right, so a single
upper Cholesky factor of H^-1 serves every row (Alg. 1), and selects the mask adaptively per block
of ``blocksize`` columns by the OBS error w^2 / [H^-1]_qq^2 (Sec. 3.3); N:M masks are chosen per
group of M columns the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.masks import lowest_k, n_pruned
from prunekit.methods.base import Method
from prunekit.registry import register


class HessianNotPositiveDefinite(RuntimeError):
    pass


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float, name: str = "layer",
                           retries: int = 3) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp I)^-1, with damp = percdamp * mean(diag H).

    When H is not positive definite (too few or degenerate calibration tokens) the damping is
    raised tenfold up to ``retries`` times before giving up with a clear error.
    """
    mean_diag = hessian.diagonal().mean()
    eye = torch.eye(len(hessian), dtype=hessian.dtype, device=hessian.device)
    damp = percdamp
    for _ in range(retries + 1):
        chol, info = torch.linalg.cholesky_ex(hessian + damp * mean_diag * eye)
        if info == 0:
            inverse = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info == 0:
                return upper
        damp *= 10
    raise HessianNotPositiveDefinite(
        f"{name}: Hessian of the calibration inputs is not positive definite even with damping "
        f"{damp / 10:g}; use more calibration samples or a larger percdamp"
    )


def block_quota(total_per_unit: float, start: int, stop: int) -> int:
    """Pruned count for columns [start, stop) so that the running total rounds exactly."""
    return int(round(total_per_unit * stop)) - int(round(total_per_unit * start))


@register
@dataclass
class SparseGPT(Method):
    name = "sparsegpt"
    needs = frozenset({"hessian"})
    percdamp: float = 0.01  # damping as a fraction of the mean Hessian diagonal
    blocksize: int = 128  # columns solved together (lazy batch updates, Sec. 3.4)

    def prune_layer(self, weight, sparsity, pattern, ctx):
        rows, cols = weight.shape
        w = weight.float().clone()
        hessian = ctx.stats.hessian.clone()
        dead = hessian.diagonal() == 0
        hessian[dead, dead] = 1.0
        w[:, dead] = 0.0
        hinv = inverse_hessian_factor(hessian, self.percdamp, ctx.name)
        mask = torch.zeros_like(w, dtype=torch.bool)
        blocksize = self.blocksize
        if pattern.kind == "n:m":
            blocksize = max(pattern.m, blocksize - blocksize % pattern.m)
        for i1 in range(0, cols, blocksize):
            i2 = min(i1 + blocksize, cols)
            w_block, m_block, err = self._solve_block(w[:, i1:i2].clone(), hinv[i1:i2, i1:i2], sparsity, pattern,
                                                      rows, i1, i2)
            w[:, i1:i2] = w_block
            mask[:, i1:i2] = m_block
            w[:, i2:] -= err @ hinv[i1:i2, i2:]
        weight.copy_(w.to(weight.dtype))
        return mask

    @staticmethod
    def _solve_block(w1, hinv1, sparsity, pattern, rows, i1, i2):
        count = i2 - i1
        d = hinv1.diagonal()
        if pattern.kind == "unstructured":
            k = block_quota(sparsity * rows, i1, i2)
            mask1 = lowest_k((w1.pow(2) / d.pow(2)).reshape(-1), k).reshape(w1.shape)
        elif pattern.kind == "per-row":
            mask1 = lowest_k(w1.pow(2) / d.pow(2), block_quota(sparsity, i1, i2), dim=1)
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        err = torch.zeros_like(w1)
        for i in range(count):
            if pattern.kind == "n:m" and i % pattern.m == 0:
                group = w1[:, i : i + pattern.m].pow(2) / d[i : i + pattern.m].pow(2)
                mask1[:, i : i + pattern.m] = lowest_k(group, pattern.n, dim=1)
            col = w1[:, i]
            q = col.masked_fill(mask1[:, i], 0.0)
            e = (col - q) / d[i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err[:, i] = e
        return w1, mask1, err


__all__ = ["SparseGPT", "inverse_hessian_factor", "n_pruned"]
