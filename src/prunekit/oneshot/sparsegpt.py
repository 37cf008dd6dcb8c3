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

from prunekit.core.masks import lowest_k, n_pruned
from prunekit.core.registry import METHODS, option
from prunekit.core.stats import LayerStats
from prunekit.oneshot.base import Method


class HessianNotPositiveDefinite(RuntimeError):
    pass


def inverse_hessian_factor(hessian: torch.Tensor | LayerStats, percdamp: float, name: str = "layer",
                           retries: int = 3) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp I)^-1, with damp = percdamp * mean(diag H), where inputs that
    were always zero (H_jj = 0) get H_jj = 1.

    When H is not positive definite (too few or degenerate calibration tokens) the damping is
    raised tenfold up to ``retries`` times before giving up with a clear error. A ``hessian`` tensor
    is left as it is. Given the layer's statistics, their X^T X is consumed when this layer is its
    last reader (:meth:`LayerStats.take_hessian`) and then cannot be retried: a failure the first
    damping cannot fix is an error naming ``percdamp``. The factor is computed in the one matrix
    taken (see :func:`_factor_in_place`): a wide layer (down_proj: 8960 inputs, 321 MB per matrix
    in float32) needs no second n x n matrix when its Hessian is consumed, one when it is copied.
    """
    stats = hessian if isinstance(hessian, LayerStats) else None
    work = stats.take_hessian() if stats else hessian.clone()
    consumed = stats is not None and stats.gram_upper is None  # the statistics let go of it: no retry
    source = None if consumed else (stats.full_hessian() if stats else hessian)
    diagonal = work.diagonal()
    dead = diagonal == 0
    diagonal[dead] = 1.0
    mean_diag = diagonal.mean()
    damp = percdamp
    for attempt in range(retries + 1):
        diagonal.add_(damp * mean_diag)
        if _factor_in_place(work):
            return work.mT  # U, column-major in the matrix's own storage (as torch's own factor comes)
        if consumed:
            raise HessianNotPositiveDefinite(
                f"{name}: Hessian of the calibration inputs is not positive definite with damping {damp:g} "
                f"(percdamp); raise percdamp (e.g. --option percdamp={damp * 10:g}) or use more calibration "
                f"samples")
        if attempt < retries:
            work.copy_(source)
            diagonal[dead] = 1.0
            damp *= 10
    raise HessianNotPositiveDefinite(
        f"{name}: Hessian of the calibration inputs is not positive definite even with damping "
        f"{damp:g}; use more calibration samples or a larger percdamp"
    )


def _factor_in_place(matrix: torch.Tensor) -> bool:
    """Overwrite the symmetric positive definite ``matrix`` A with the upper Cholesky factor of A^-1,
    stored transposed (``matrix.mT`` holds U): LAPACK works on column-major arrays, and the
    column-major view of a symmetric row-major matrix is the matrix itself, so torch factors, inverts
    and factors again in place instead of copying n x n matrices. The factor's values and layout are
    those of torch's own (column-major) result, bit for bit; the solve's rounding, and so SparseGPT's
    masks, depend on that layout. False (and ``matrix`` overwritten) when A or its inverse is not
    numerically positive definite."""
    f = matrix.mT
    info = torch.empty((), dtype=torch.int32, device=matrix.device)
    torch.linalg.cholesky_ex(f, out=(f, info))  # f = L, lower, with A = L L^T
    if info.item() != 0:
        return False
    torch.cholesky_inverse(f, out=f)  # f = A^-1
    torch.linalg.cholesky_ex(f, upper=True, out=(f, info))  # f = U, upper, with A^-1 = U^T U
    return info.item() == 0


def block_quota(total_per_unit: float, start: int, stop: int) -> int:
    """Pruned count for columns [start, stop) so that the running total rounds exactly."""
    return int(round(total_per_unit * stop)) - int(round(total_per_unit * start))


@METHODS.register("sparsegpt")
@dataclass
class SparseGPT(Method):
    """OBS reconstruction with H = X^T X: prune and update the kept weights (Frantar & Alistarh 2023)."""

    needs = frozenset({"hessian"})
    updates_weights = True
    percdamp: float = option(0.01, "damping, as a fraction of the mean Hessian diagonal", min=0, max=10)
    blocksize: int = option(128, "columns solved together (lazy batch updates, Sec. 3.4)", min=1)

    def prune_layer(self, weight, sparsity, pattern, ctx):
        rows, cols = weight.shape
        w = weight.float().clone()
        w[:, ctx.stats.full_hessian().diagonal() == 0] = 0.0  # inputs that were always zero: their weights go
        hinv = inverse_hessian_factor(ctx.stats, self.percdamp, ctx.name)
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
        """Prune columns [i1, i2): returns the pruned block, its mask and the OBS errors E that the
        remaining columns must absorb (W[:, i2:] -= E @ Hinv[i1:i2, i2:])."""
        d = hinv1.diagonal()
        if pattern.kind == "n:m":
            mask1 = None  # chosen group by group from the weights updated so far
        elif pattern.kind == "unstructured":
            k = block_quota(sparsity * rows, i1, i2)
            mask1 = lowest_k((w1.pow(2) / d.pow(2)).reshape(-1), k).reshape(w1.shape)
        else:
            mask1 = lowest_k(w1.pow(2) / d.pow(2), block_quota(sparsity, i1, i2), dim=1)
        return obs_columns(w1, hinv1, mask1, pattern)


def obs_columns(w1: torch.Tensor, hinv1: torch.Tensor, mask1: torch.Tensor | None, pattern) -> tuple:
    """SparseGPT's lazy-batch column loop over one block (Alg. 1): prune column i, spread its OBS
    error e_i = w_i / U_ii over the block's later columns (a rank-1 update with row i of the upper
    Cholesky factor U of H^-1). With ``mask1=None`` (N:M) each group's mask is chosen when the loop
    reaches it, from the weights updated so far. Returns (pruned block, mask, errors)."""
    d = hinv1.diagonal()
    err = torch.zeros_like(w1)
    if mask1 is None:
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        groups = pattern.m
    else:
        groups = 0
    for i in range(w1.shape[1]):
        if groups and i % groups == 0:
            g = slice(i, i + groups)
            mask1[:, g] = lowest_k(w1[:, g].pow(2) / d[g].pow(2), pattern.n, dim=1)
        e = w1[:, i].masked_fill(~mask1[:, i], 0.0).div_(d[i])
        w1[:, i + 1 :].addr_(e, hinv1[i, i + 1 :], alpha=-1.0)
        err[:, i] = e
    return w1.masked_fill_(mask1, 0.0), mask1, err


__all__ = ["SparseGPT", "inverse_hessian_factor", "n_pruned"]
