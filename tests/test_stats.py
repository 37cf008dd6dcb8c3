"""The one calibration engine and statistics object, checked against independent dense computations:
per-layer statistics and block similarity from the block runner, and the gradient collector's
reductions against a plain per-window ``.backward()`` loop."""

import pytest
import torch
from torch import nn

from prunekit.core.calibration import walk_blocks
from prunekit.core.errors import PrunekitError
from prunekit.core.families import adapter_for, as_out_in
from prunekit.core.stats import LayerStats, collect_gradients
from tests.conftest import tiny_model, tiny_windows

WINDOWS = tiny_windows(6, 16, seed=3)


def dense_inputs(model, layers, blocks):
    """Inputs of every layer and (input, output) of every block in one plain forward of all windows."""
    seen, handles = {}, []
    for name, m in layers.items():
        handles.append(m.register_forward_pre_hook(lambda _m, args, n=name: seen.__setitem__(n, args[0].detach())))
    for i, b in enumerate(blocks):
        def hook(_m, args, kwargs, out, i=i):
            x = args[0] if args else kwargs["hidden_states"]
            seen[i] = (x.detach(), (out[0] if isinstance(out, tuple) else out).detach())
        handles.append(b.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(WINDOWS)
    finally:
        for h in handles:
            h.remove()
    return seen


def runner_stats(model, needs, chunk_size=4):
    adapter = adapter_for(model)
    per_block = [adapter.linears(i) for i in range(len(adapter.blocks))]
    stats = {}
    sims = walk_blocks(model, adapter.blocks, WINDOWS, chunk_size, per_block,
                       lambda name, _m, s: stats.__setitem__(name, s), needs=needs, progress=False)
    return adapter, per_block, stats, sims


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_runner_layer_statistics_match_a_dense_forward(family):
    model = tiny_model(family)
    adapter, per_block, stats, sims = runner_stats(model, frozenset({"norms", "hessian", "moments", "similarity"}))
    layers = {k: v for b in per_block for k, v in b.items()}
    dense = dense_inputs(model, layers, adapter.blocks)
    assert set(stats) == set(layers)
    for name in layers:
        x = dense[name].double().reshape(-1, dense[name].shape[-1])
        s = stats[name]
        assert s.tokens == WINDOWS.numel() and s.samples == len(WINDOWS)
        close = dict(rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(s.sq_norms, x.pow(2).sum(0), **close)
        torch.testing.assert_close(s.mean, x.mean(0), **close)
        torch.testing.assert_close(s.mean_square, x.pow(2).mean(0), **close)
        torch.testing.assert_close(s.variance, x.var(0, unbiased=True), **close)
        torch.testing.assert_close(s.full_hessian(), x.t() @ x, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(s.column_norms(), (x.pow(2).sum(0) / len(WINDOWS)).sqrt(), **close)
        assert s.sq_norms.dtype == torch.float64  # channel moments are summed in float64
    expected = []
    for i in range(len(adapter.blocks)):
        x, y = dense[i]
        expected.append(nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).mean().item())
    assert sims == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_one_shot_statistics_stay_float32_and_similarity_only_when_asked():
    _, _, stats, sims = runner_stats(tiny_model("llama"), frozenset({"norms"}))
    s = next(iter(stats.values()))
    assert s.sq_norms.dtype == torch.float32 and s.sums is None and s.gram_upper is None
    assert sims == []


def test_statistics_do_not_depend_on_the_chunk_size():
    a = runner_stats(tiny_model("llama"), frozenset({"moments", "similarity"}), chunk_size=1)
    b = runner_stats(tiny_model("llama"), frozenset({"moments", "similarity"}), chunk_size=6)
    assert a[3] == pytest.approx(b[3], rel=1e-9)
    for name in a[2]:
        torch.testing.assert_close(a[2][name].variance, b[2][name].variance, rtol=1e-5, atol=1e-8)


def test_layer_stats_in_parts_equal_the_closed_forms():
    x = torch.randn(3, 10, 5, generator=torch.Generator().manual_seed(0)) * 4 + 2
    s = LayerStats.for_needs(5, frozenset({"moments"}))
    for part in x:
        s.add(part[None], samples=1)
    flat = x.reshape(-1, 5).double()
    torch.testing.assert_close(s.mean, flat.mean(0))
    torch.testing.assert_close(s.variance, flat.var(0))
    torch.testing.assert_close(s.mean_square, flat.pow(2).mean(0))


# ------------------------------------------------------------------ gradients

def manual_gradients(model, layers, batches, loss_of):
    """Per-sample gradients with .backward(), one sample at a time."""
    per_sample = []
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_of(batch).backward()
        per_sample.append({n: (as_out_in(m, m.weight.grad).clone(), None if m.bias is None else m.bias.grad.clone())
                           for n, m in layers.items()})
    model.zero_grad(set_to_none=True)
    return per_sample


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gradient_reductions_match_a_per_window_backward_loop(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    layers = {**adapter.linears(0), **adapter.linears(1)}
    windows = WINDOWS[:4]
    per_sample = manual_gradients(model, layers, [windows[i:i + 1] for i in range(4)],
                                  lambda ids: model(input_ids=ids, labels=ids).loss)
    flags = [p.requires_grad for p in model.parameters()]
    mean = collect_gradients(model, windows, layers, "mean", biases=True)
    l2 = collect_gradients(model, windows, layers, "l2")
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())  # .grad fields untouched
    for name, m in layers.items():
        gs = torch.stack([g[name][0] for g in per_sample])
        assert mean[name].weight.shape == as_out_in(m, m.weight).shape
        torch.testing.assert_close(mean[name].weight, gs.mean(0), rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(l2[name].weight, gs.pow(2).sum(0).sqrt(), rtol=1e-5, atol=1e-8)
        assert l2[name].bias is None
        if m.bias is not None:
            torch.testing.assert_close(mean[name].bias, torch.stack([g[name][1] for g in per_sample]).mean(0),
                                       rtol=1e-5, atol=1e-8)


def test_gradients_of_labelled_samples_with_a_custom_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(10, 6, generator=g), torch.randint(0, 3, (10,), generator=g)
    layers = {"0": model[0], "3": model[3]}
    model.eval()  # the collector measures in eval mode (no dropout), then restores the mode
    per_sample = manual_gradients(model, layers, [(x[i:i + 1], y[i:i + 1]) for i in range(10)],
                                  lambda b: nn.functional.cross_entropy(model(b[0]), b[1]))
    model.train()
    got = collect_gradients(model, (x, y), layers, "l2", loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]))
    assert model.training
    for name in layers:
        torch.testing.assert_close(got[name].weight, torch.stack([p[name][0] for p in per_sample]).pow(2).sum(0).sqrt())


def test_unknown_reduction_and_undeclared_needs_are_errors():
    from prunekit.oneshot.base import Method
    from prunekit.structured.criteria.base import Criterion

    model = tiny_model("llama")
    with pytest.raises(PrunekitError, match="'rms'.*mean, l2"):
        collect_gradients(model, WINDOWS[:1], adapter_for(model).linears(0), "rms")
    with pytest.raises(PrunekitError, match=r"needs unknown statistics \['norm'\].*norms"):
        type("Typo", (Method,), {"needs": frozenset({"norm"})})
    with pytest.raises(PrunekitError, match="gradient reduction 'sum'"):
        type("Typo", (Criterion,), {"needs": frozenset({"gradients"}), "gradient_reduction": "sum"})


# ------------------------------------------------------------------ what the structured driver asks for

def test_structured_driver_collects_exactly_the_declared_statistics():
    from prunekit.core.registry import CRITERIA
    from prunekit.structured.prune import gather_statistics, needed_statistics

    flap, random, taylor = CRITERIA.build("flap"), CRITERIA.build("random"), CRITERIA.build("taylor")
    assert needed_statistics(flap, ("mlp", "heads"), 0.2, compensate=True) == {"moments"}
    assert needed_statistics(flap, ("blocks",), None, compensate=True) == {"similarity"}
    assert needed_statistics(random, ("mlp", "blocks"), 0.2, compensate=False) == set()
    assert needed_statistics(taylor, ("mlp",), 0.2, compensate=False) == {"gradients"}
    assert needed_statistics(CRITERIA.build("magnitude"), ("mlp",), 0.2, compensate=True) == {"moments"}

    model = tiny_model("llama")
    adapter = adapter_for(model)
    stats = gather_statistics(adapter, WINDOWS, frozenset({"similarity"}))
    assert stats.collected == {"similarity"} and stats.layers == {} and len(stats.block_similarity) == 2
    stats = gather_statistics(adapter, WINDOWS, frozenset({"moments", "similarity"}), stats=stats)
    assert stats.collected == {"moments", "similarity"}
    assert set(stats.layers) == {"model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj",
                                 "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"}
    again = gather_statistics(adapter, WINDOWS[:1], frozenset({"moments"}), stats=stats)
    assert again is stats and again.windows == len(WINDOWS)  # reused, not collected again


def test_prune_structured_reuses_given_statistics():
    from prunekit.structured import prune_structured

    from prunekit.structured.prune import gather_statistics

    first = prune_structured(tiny_model("llama"), method="flap", structure="mlp", ratio=0.25, calibration=WINDOWS,
                             nsamples=6, seqlen=16)
    assert "statistics_s" in first.timings
    dense = tiny_model("llama")
    stats = gather_statistics(adapter_for(dense), WINDOWS, frozenset({"moments"}))
    again = prune_structured(dense, method="flap", structure="mlp", ratio=0.25, calibration=WINDOWS, nsamples=6,
                             seqlen=16, statistics=stats)
    assert "statistics_s" not in again.timings and again.mlp_widths == first.mlp_widths


def test_random_depth_pruning_removes_the_asked_blocks_seeded():
    """The random baseline used to remove nothing: it drew from the (uncollected) similarity list."""
    from prunekit.structured import prune_structured

    removed = []
    for seed in (0, 0, 1, 2, 3):
        model = tiny_model("llama")
        result = prune_structured(model, method="random", structure="blocks", remove=1, seed=seed)
        assert len(result.removed_blocks) == 1 and len(adapter_for(model).blocks) == 1
        removed.append(result.removed_blocks[0])
    assert removed[0] == removed[1] and len(set(removed)) == 2
