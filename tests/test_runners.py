"""The block runner's three schedules (``core.calibration.RUNNERS``), each against an independent
computation: ``dense`` gives the lock-step's statistics bit for bit, and prunes every layer on the
inputs of one plain forward of the dense model; ``two-pass`` prunes every layer of a block on the
*dense* block's inputs, which a plain forward with hooks reproduces; streamed and in-memory prunes
agree; a two-pass or dense block never holds more than one chunk's activations."""

from __future__ import annotations

import weakref

import pytest
import torch

import prunekit
from prunekit.core.calibration import capture_block_inputs, run_block, walk_blocks
from prunekit.core.errors import PrunekitError
from prunekit.core.families import adapter_for, weight_view
from prunekit.core.recipe import CalibrationConfig, Recipe
from prunekit.oneshot.step import PruneStep
from tests.conftest import tiny_model, tiny_windows
from tests.test_stats import WINDOWS, dense_inputs
from tests.test_streaming import _NoTokenizer, load, same_weights, save_tiny

NEEDS = frozenset({"norms", "hessian", "moments", "similarity"})


def walk(model, runner, needs=NEEDS, chunk_size=4):
    adapter = adapter_for(model)
    per_block = [adapter.linears(i) for i in range(len(adapter.blocks))]
    stats, order = {}, []

    def keep(name, _module, s):
        stats[name] = s
        order.append(name)

    sims = walk_blocks(model, adapter.blocks, WINDOWS, chunk_size, per_block, keep, needs=needs, progress=False,
                       runner=runner)
    return stats, order, sims


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_dense_runner_gives_the_lockstep_statistics_bit_for_bit(family):
    model = tiny_model(family)
    lock, lock_order, lock_sims = walk(model, "lockstep")
    seen, seen_order, seen_sims = walk(model, "dense")
    assert seen_order == lock_order  # execution order
    assert seen_sims == lock_sims
    for name, s in lock.items():
        for field in ("sq_norms", "sums", "gram_upper"):
            a, b = getattr(s, field), getattr(seen[name], field)
            assert (a is None and b is None) or torch.equal(a, b), (name, field)
        assert (s.tokens, s.samples) == (seen[name].tokens, seen[name].samples)


def wanda_by_hand(model, sparsity, whole_dense_model=False):
    """Wanda per row, every layer of block b scored on the inputs of the *dense* block b (blocks before
    it already pruned; with ``whole_dense_model``, on the inputs of the dense model, from one plain
    forward before anything is pruned): a forward with hooks, then |W| * ||X_j||, the lowest half per
    row."""
    adapter = adapter_for(model)
    every = {}
    for b in range(len(adapter.blocks)):
        every.update(adapter.linears(b))
    dense = dense_inputs(model, every, []) if whole_dense_model else None
    for b in range(len(adapter.blocks)):
        layers = adapter.linears(b)
        seen = dense or dense_inputs(model, layers, [])
        with torch.no_grad():
            for name, m in layers.items():
                x = seen[name].reshape(-1, seen[name].shape[-1])
                norm = (x.pow(2).sum(0) / len(WINDOWS)).sqrt()
                w = weight_view(m)
                score = w.abs() * norm
                k = int(sparsity * w.shape[1])
                drop = score.argsort(dim=1)[:, :k]
                w.scatter_(1, drop, 0.0)
    return model


def test_two_pass_wanda_equals_pruning_each_block_on_its_dense_inputs():
    rec = Recipe([PruneStep(method="wanda", sparsity=0.5, pattern="per-row")],
                 CalibrationConfig(nsamples=len(WINDOWS), seqlen=WINDOWS.shape[1], chunk_size=4, runner="two-pass"))
    ours = tiny_model("llama")
    prunekit.prune(ours, rec, calibration=WINDOWS, progress=False)
    reference = wanda_by_hand(tiny_model("llama"), 0.5)
    for (name, a), (_, b) in zip(ours.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # and it is a different schedule: the lock-step calibrates o/down on the pruned q/k/v/gate/up
    lockstep = tiny_model("llama")
    prunekit.prune(lockstep, Recipe(rec.steps, CalibrationConfig(nsamples=6, seqlen=16, chunk_size=4)),
                   calibration=WINDOWS, progress=False)
    assert not same_weights(lockstep, ours)


def test_dense_runner_wanda_equals_pruning_every_layer_on_the_dense_model():
    rec = Recipe([PruneStep(method="wanda", sparsity=0.5, pattern="per-row")],
                 CalibrationConfig(nsamples=len(WINDOWS), seqlen=WINDOWS.shape[1], chunk_size=4, runner="dense"))
    ours = tiny_model("llama")
    prunekit.prune(ours, rec, calibration=WINDOWS, progress=False)
    reference = wanda_by_hand(tiny_model("llama"), 0.5, whole_dense_model=True)
    for (name, a), (_, b) in zip(ours.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # blocks after the first see other inputs than two-pass's (the earlier blocks' pruning is not propagated)
    two_pass = tiny_model("llama")
    prunekit.prune(two_pass, Recipe(rec.steps, CalibrationConfig(nsamples=6, seqlen=16, chunk_size=4,
                                                                 runner="two-pass")), calibration=WINDOWS,
                   progress=False)
    assert not same_weights(two_pass, ours)


@pytest.mark.parametrize("runner", ["two-pass", "dense"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_streamed_and_in_memory_give_the_same_weights(method, runner, tmp_path):
    folder = save_tiny(tmp_path / "tiny", shard="50KB")
    rec = Recipe([PruneStep(method=method, sparsity=0.6)],
                 CalibrationConfig(nsamples=8, seqlen=32, chunk_size=3, runner=runner))
    model = load(folder)
    prunekit.prune(model, rec, calibration=tiny_windows(), progress=False)
    prunekit.prune_pretrained(folder, tmp_path / "out", rec, calibration=tiny_windows(), tokenizer=_NoTokenizer(),
                              progress=False)
    assert same_weights(model, load(tmp_path / "out"))


def test_a_two_pass_or_dense_block_holds_one_chunk_of_activations_at_a_time():
    """Layer inputs still alive whenever a layer is entered: the lock-step parks every chunk inside the
    block (all their inputs alive at the last barrier); two-pass has one chunk in flight, whose
    distinct layer inputs are at most the block's four (q/k/v, o, gate/up, down)."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    inputs = capture_block_inputs(model, adapter.blocks[0], WINDOWS, chunk_size=1)
    refs, peak = [], {"now": 0}

    def probe(_m, args):
        if not any(r() is args[0] for r in refs):
            refs.append(weakref.ref(args[0]))
        peak["now"] = max(peak["now"], sum(r() is not None for r in refs))

    layers = adapter.linears(0)
    handles = [m.register_forward_pre_hook(probe) for m in layers.values()]
    try:
        peaks = {}
        for runner in ("lockstep", "two-pass", "dense"):
            refs.clear()
            peak["now"] = 0
            run_block(adapter.blocks[0], [type(i)(i.hidden.clone(), i.args, i.kwargs) for i in inputs], layers,
                      lambda *a: None, runner=runner)
            peaks[runner] = peak["now"]
    finally:
        for h in handles:
            h.remove()
    assert peaks["lockstep"] >= len(WINDOWS) and peaks["two-pass"] <= 4 and peaks["dense"] <= 4, peaks


def test_an_unknown_runner_is_refused_with_the_choices():
    with pytest.raises(PrunekitError, match="runner.*two-pass"):
        CalibrationConfig(runner="parallel")
    with pytest.raises(ValueError, match="lockstep, two-pass, dense"):
        walk(tiny_model("llama"), "parallel")


def test_two_pass_sparsegpt_consumes_each_hessian_with_the_same_result(monkeypatch):
    """The two-pass runner marks each statistics object's last reader; SparseGPT then factors the Hessian in
    place and the statistics let go of it. Same weights as when every reader gets a copy."""
    from prunekit.core.stats import LayerStats

    rec = Recipe([PruneStep(method="sparsegpt", sparsity=0.5)],
                 CalibrationConfig(nsamples=len(WINDOWS), seqlen=WINDOWS.shape[1], chunk_size=4, runner="two-pass"))
    seen = []
    take = LayerStats.take_hessian

    def spy(self):
        last = self.last_reader
        out = take(self)
        seen.append((last, self.gram_upper is None))
        return out

    monkeypatch.setattr(LayerStats, "take_hessian", spy)
    consumed = tiny_model("llama")
    prunekit.prune(consumed, rec, calibration=WINDOWS, progress=False)
    blocks = len(adapter_for(consumed).blocks)
    assert seen.count((True, True)) == 4 * blocks  # q/k/v, o, gate/up, down: one Hessian each, let go
    assert seen.count((False, False)) == 3 * blocks  # q, k and gate read a copy, their siblings consume
    monkeypatch.setattr(LayerStats, "take_hessian", lambda self: self.full_hessian().clone())
    copied = tiny_model("llama")
    prunekit.prune(copied, rec, calibration=WINDOWS, progress=False)
    assert same_weights(consumed, copied)


def test_cli_runner_flag_reaches_the_recipe_and_the_output(tmp_path, smollm2_tokenizer):
    """`prunekit prune --runner dense --chunk-size 3` runs the dense schedule in chunks of 3 windows (its
    prunekit.json says so) and gives the weights of prunekit.prune with that runner on the same windows."""
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    from prunekit.cli import main
    from prunekit.core.data_sources import calibration_windows

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    folder = tmp_path / "in"
    LlamaForCausalLM(config).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    argv = ["prune", "--model", folder, "--method", "wanda", "--sparsity", "0.5", "--nsamples", "4", "--seqlen", "32",
            "--calibration", "brown:r", "--runner", "dense", "--chunk-size", "3", "--out", tmp_path / "out", "--quiet"]
    assert main([str(a) for a in argv]) == 0
    saved = json.loads((tmp_path / "out" / "prunekit.json").read_text())
    assert (saved["calibration"]["runner"], saved["calibration"]["chunk_size"]) == ("dense", 3)
    model = load(folder)
    rec = Recipe([PruneStep(method="wanda", sparsity=0.5)], CalibrationConfig(nsamples=4, seqlen=32, runner="dense", chunk_size=3))
    prunekit.prune(model, rec, calibration=calibration_windows("brown:r", smollm2_tokenizer, 4, 32, 0), progress=False)
    assert same_weights(model, load(tmp_path / "out"))
