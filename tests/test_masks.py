import pytest
import torch

from prunekit.core.allocation import Global, outlier_ratio, owl_ratios
from prunekit.core.masks import Pattern, mask_from_scores, parse_pattern


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_unstructured_exact_count(sparsity):
    scores = torch.randn(37, 64)
    mask = mask_from_scores(scores, sparsity, Pattern("unstructured"))
    assert int(mask.sum()) == round(sparsity * scores.numel())
    # the pruned ones are exactly the lowest scores
    if mask.any() and (~mask).any():
        assert scores[mask].max() <= scores[~mask].min()


def test_per_row_exact_count_in_every_row():
    scores = torch.randn(20, 50)
    mask = mask_from_scores(scores, 0.4, Pattern("per-row"))
    assert (mask.sum(dim=1) == 20).all()


@pytest.mark.parametrize("spec", ["2:4", "4:8", "1:4", "3:8"])
def test_nm_has_n_zeros_in_every_group(spec):
    p = parse_pattern(spec)
    scores = torch.randn(16, 64)
    mask = mask_from_scores(scores, p.sparsity, p)
    groups = mask.reshape(16, 64 // p.m, p.m).sum(dim=2)
    assert (groups == p.n).all()


def test_ties_broken_by_index_deterministically():
    scores = torch.ones(4, 8)  # all tied, like 4-bit quantized weights
    mask = mask_from_scores(scores, 0.5, Pattern("per-row"))
    assert mask[:, :4].all() and not mask[:, 4:].any()
    assert torch.equal(mask, mask_from_scores(scores.clone(), 0.5, Pattern("per-row")))


@pytest.mark.parametrize("spec", ["4:4", "5:4", "0:4", "2-4", "dense"])
def test_bad_patterns_rejected(spec):
    with pytest.raises(ValueError, match="pattern"):
        parse_pattern(spec)


def test_global_ratios_match_a_brute_force_global_threshold():
    torch.manual_seed(0)
    scores = {"a": torch.rand(10, 10) * 0.1, "b": torch.rand(10, 10), "c": torch.rand(5, 20) * 2}
    ratios = Global().ratios(scores, 0.5)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    threshold = flat.sort().values[149]  # 150 of 300 pruned
    for name, s in scores.items():
        assert ratios[name] == pytest.approx(float((s <= threshold).float().mean()))
    total = sum(ratios[n] * s.numel() for n, s in scores.items())
    assert total == pytest.approx(150)
    assert ratios["a"] > ratios["b"] > ratios["c"]


def test_owl_ratios_mean_and_direction():
    d = [0.01, 0.05, 0.02, 0.09]
    r = owl_ratios(d, 0.7, lam=0.08)
    assert sum(r) / len(r) == pytest.approx(0.7)
    assert max(r) - min(r) == pytest.approx(0.16)
    assert r[3] == min(r) and r[0] == max(r)  # most outliers -> least pruned


def test_outlier_ratio_counts_entries_above_m_times_mean():
    s = torch.tensor([1.0] * 99 + [1000.0])
    assert outlier_ratio(s, 5.0) == pytest.approx(0.01)


def test_lean_allocator_applies_on_glibc_once():
    import platform

    from prunekit.core.memory import lean_allocator, peak_rss_mb

    on_glibc = platform.libc_ver()[0] == "glibc"
    assert lean_allocator() is on_glibc  # mallopt accepted both settings
    assert lean_allocator() is on_glibc  # and a second call changes nothing
    assert 50 < peak_rss_mb() < 100_000  # MB, not KB or bytes


@pytest.mark.parametrize("shape, dim", [((40, 64), 1), ((64, 40), 0), ((3000,), -1), ((8, 6, 4), 2)])
def test_lowest_k_equals_a_stable_sort_with_many_ties(shape, dim):
    from prunekit.core.masks import lowest_k

    torch.manual_seed(len(shape))
    scores = (torch.randn(shape) * 2).round()  # a handful of distinct values: ties everywhere
    for k in (0, 1, scores.shape[dim] // 2, scores.shape[dim]):
        order = torch.sort(scores, dim=dim, stable=True).indices.narrow(dim, 0, k)
        expected = torch.zeros_like(scores, dtype=torch.bool).scatter_(dim, order, True)
        assert torch.equal(lowest_k(scores, k, dim), expected)


def test_bad_mmap_threshold_setting_is_a_clear_error(monkeypatch):
    import prunekit.core.memory as memory

    monkeypatch.setattr(memory, "_applied", False)
    monkeypatch.setenv("PRUNEKIT_MMAP_THRESHOLD_MB", "lots")
    with pytest.raises(ValueError, match="PRUNEKIT_MMAP_THRESHOLD_MB.*'lots'"):
        memory.lean_allocator()
