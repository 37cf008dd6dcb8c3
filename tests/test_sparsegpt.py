"""SparseGPT's solver against a direct transcription of the column loop (Alg. 1), and its Hessian."""

import pytest
import torch

from prunekit.core.masks import lowest_k, parse_pattern
from prunekit.core.stats import LayerStats
from prunekit.oneshot.base import LayerContext
from prunekit.oneshot.sparsegpt import HessianNotPositiveDefinite, SparseGPT, block_quota, inverse_hessian_factor


def column_loop_reference(w, hessian, sparsity, pattern, blocksize, percdamp=0.01):
    w = w.clone()
    rows, cols = w.shape
    u = inverse_hessian_factor(hessian.clone(), percdamp)
    mask = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        d = u1.diagonal()
        err = torch.zeros_like(w1)
        if pattern.kind == "unstructured":
            m1 = lowest_k((w1**2 / d**2).reshape(-1), block_quota(sparsity * rows, i1, i2)).reshape(w1.shape)
        elif pattern.kind == "per-row":
            m1 = lowest_k(w1**2 / d**2, block_quota(sparsity, i1, i2), dim=1)
        else:
            m1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if pattern.kind == "n:m" and i % pattern.m == 0:
                m1[:, i : i + pattern.m] = lowest_k(w1[:, i : i + pattern.m] ** 2 / d[i : i + pattern.m] ** 2,
                                                    pattern.n, dim=1)
            col = w1[:, i]
            q = col.masked_fill(m1[:, i], 0)
            e = (col - q) / d[i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None]
            w1[:, i] = q
            err[:, i] = e
        w[:, i1:i2], mask[:, i1:i2] = w1, m1
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return w, mask


@pytest.mark.parametrize("spec", ["unstructured", "per-row", "2:4", "4:8"])
def test_solver_equals_column_loop_reference(spec):
    torch.manual_seed(0)
    x = torch.randn(3000, 64) * torch.rand(64) * 3
    w = torch.randn(48, 64)
    stats = LayerStats(64, want_hessian=True)
    stats.add(x, samples=1)
    pattern = parse_pattern(spec)
    got = w.clone()
    mask = SparseGPT(blocksize=16).prune_layer(got, 0.5, pattern, LayerContext("t", stats))
    ref_w, ref_mask = column_loop_reference(w, x.T @ x, 0.5, pattern, 16)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(got.masked_fill(mask, 0), ref_w, atol=1e-4, rtol=1e-4)


def test_reconstruction_beats_brute_force_unupdated_mask():
    """On a 16x16 layer, SparseGPT's update gives lower ||WX - W'X|| than zeroing the same mask."""
    torch.manual_seed(1)
    x = torch.randn(500, 16) @ torch.randn(16, 16)  # correlated inputs: updates matter
    w = torch.randn(16, 16)
    stats = LayerStats(16, want_hessian=True)
    stats.add(x, samples=1)
    new = w.clone()
    mask = SparseGPT(blocksize=8).prune_layer(new, 0.5, parse_pattern("per-row"), LayerContext("t", stats))
    new[mask] = 0
    err_updated = (x @ (w - new).T).norm()
    err_zeroed = (x @ (w * ~mask).T - x @ w.T).norm()
    assert err_updated < 0.9 * err_zeroed
    # and the optimal least-squares refit of the kept weights (brute force per row) is a lower bound
    best = 0.0
    for r in range(16):
        keep = ~mask[r]
        sol = torch.linalg.lstsq(x[:, keep], x @ w[r])[0]
        best += ((x[:, keep] @ sol - x @ w[r]) ** 2).sum()
    assert best.sqrt() <= err_updated + 1e-3


def test_non_positive_definite_hessian_is_a_clear_error():
    h = -torch.eye(8)
    with pytest.raises(HessianNotPositiveDefinite, match="not positive definite"):
        inverse_hessian_factor(h, 0.01, "model.layers.0.q_proj")


def test_singular_hessian_recovers_with_damping():
    x = torch.randn(3, 8)  # 3 tokens for 8 inputs: rank-deficient
    u = inverse_hessian_factor(x.T @ x + 0.0, 0.01)
    assert torch.isfinite(u).all()


@pytest.mark.parametrize("d", [16, 61, 576])
def test_block_triangular_gram_equals_full_product(d):
    torch.manual_seed(d)
    stats = LayerStats(d, want_hessian=True)
    chunks = [torch.randn(2, 37, d) for _ in range(3)]
    for c in chunks:
        stats.add(c, samples=2)
    x = torch.cat(chunks).reshape(-1, d).double()
    h = stats.full_hessian()
    torch.testing.assert_close(h.double(), x.T @ x, rtol=1e-5, atol=1e-3)
    assert torch.equal(h, h.T)


def consumed_stats(d: int, tokens: int, seed: int = 0) -> tuple[LayerStats, torch.Tensor]:
    """Statistics whose Hessian the next reader consumes (as the two-pass runner marks the last reader)."""
    torch.manual_seed(seed)
    stats = LayerStats(d, want_hessian=True)
    x = torch.randn(1, tokens, d)
    stats.add(x, samples=1)
    stats.last_reader = True
    return stats, stats.full_hessian().clone()


def test_consumed_hessian_is_factored_in_its_own_storage():
    stats, hessian = consumed_stats(96, 400)
    storage = stats.gram_upper.untyped_storage().data_ptr()
    u = inverse_hessian_factor(stats, 0.01)
    assert stats.gram_upper is None  # let go of by the statistics
    assert u.untyped_storage().data_ptr() == storage  # the factor lives where X^T X was
    damped = hessian + 0.01 * hessian.diagonal().mean() * torch.eye(96)
    torch_own = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    assert torch.equal(u, torch_own) and u.stride() == torch_own.stride()  # values and layout, bit for bit
    torch.testing.assert_close(u, inverse_hessian_factor(hessian, 0.01), rtol=0, atol=0)
    torch.testing.assert_close(u.T @ u, torch.linalg.inv(damped.double()).float(), rtol=1e-3, atol=1e-6)


def test_consumed_hessian_that_fails_names_percdamp():
    stats, _ = consumed_stats(8, 20)
    stats.gram_upper.copy_(-torch.eye(8))
    stats._mirrored = True
    with pytest.raises(HessianNotPositiveDefinite, match="percdamp"):
        inverse_hessian_factor(stats, 0.01, "model.layers.0.down_proj")


def test_inverse_factor_needs_no_second_matrix():
    """Peak RSS of a fresh process while a consumed 2048 x 2048 Hessian (16 MB) is factored: the
    factorization, inversion and second factorization add less than half a matrix."""
    import subprocess
    import sys
    code = """
import resource, torch
from prunekit.core.stats import LayerStats
from prunekit.oneshot.sparsegpt import inverse_hessian_factor
torch.set_num_threads(1)
stats = LayerStats(2048, want_hessian=True)
stats.add(torch.randn(1, 256, 2048), samples=1)
stats.full_hessian(); stats.last_reader = True
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
u = inverse_hessian_factor(stats, 0.01)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, bool(torch.isfinite(u).all()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    grown_mb, finite = float(out[0]), out[1] == "True"
    assert finite and grown_mb < 8.0, grown_mb
