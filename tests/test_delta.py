"""Delta pruning: DARE, DAREx-q (per layer and global), magnitude and Wanda-style deltas on a tiny pair.

The pair is a tiny random Llama and a copy whose block linears moved by a random delta (a norm moved
too, to check that untargeted tensors keep their whole delta)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prunekit.cli import main
from prunekit.core.errors import PrunekitError
from prunekit.core.families import adapter_for, weight_view
from prunekit.core.recipe import CalibrationConfig, Recipe
from prunekit.core.registry import DELTA_METHODS
from prunekit.delta.darex_q import layer_factor
from prunekit.delta.prune import calibration_loss, check_pair, prune_delta
from prunekit.delta.step import DeltaStep
from tests.conftest import tiny_model, tiny_windows


def tiny_pair(family: str = "llama", scale: float = 0.02, seed: int = 1):
    base = tiny_model(family)
    finetuned = tiny_model(family)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in finetuned.named_parameters():
            if param.dim() == 2 and ("layers." in name or ".h." in name):
                param.add_(torch.randn(param.shape, generator=gen) * scale)
        norm = next(p for p in adapter_for(finetuned).blocks[0].parameters() if p.dim() == 1)
        norm.add_(0.01)  # a norm (or bias) of the first block: not a target, keeps its delta
    return base, finetuned


def deltas(base, model):
    adapter = adapter_for(model)
    return {name: weight_view(m) - weight_view(base.get_submodule(name))
            for i in range(len(adapter.blocks)) for name, m in adapter.linears(i).items()}


def calibration(n: int = 4):
    return CalibrationConfig(source=tiny_windows(n, 32), nsamples=n, seqlen=32, chunk_size=2)


def test_every_method_is_registered_and_checked():
    assert set(DELTA_METHODS.names()) >= {"dare", "darex-q", "magnitude", "wanda"}
    recipe = Recipe.from_dict({"steps": [{"kind": "delta", "method": "darex-q", "drop": 0.99,
                                          "options": {"scope": "global"}}]})
    assert recipe.steps[0].sparsity == 0.99 and recipe.steps[0].options == {"scope": "global"}
    with pytest.raises(PrunekitError, match="scope"):
        DeltaStep(method="darex-q", options={"scope": "everywhere"})
    with pytest.raises(PrunekitError, match="did you mean 'dare'"):
        DeltaStep(method="daree")
    with pytest.raises(PrunekitError, match="sparsity"):
        DeltaStep(sparsity=1.0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_dare_drops_p_at_random_and_rescales_the_rest(family):
    base, finetuned = tiny_pair(family)
    before = deltas(base, finetuned)
    result = prune_delta(base, finetuned, method="dare", sparsity=0.75, seed=3)
    after = deltas(base, finetuned)
    dropped = sum(int((after[n] == 0).sum()) for n in after) / sum(d.numel() for d in after.values())
    assert abs(dropped - 0.75) < 0.02
    for name, delta in after.items():
        kept = delta != 0
        torch.testing.assert_close(delta[kept], before[name][kept] * 4, rtol=1e-5, atol=1e-6)
    assert all(r.factor == 4 for r in result.layers)
    assert len(result.untargeted_changed) == 1
    # same seed, same drops; another seed, other drops
    again = tiny_pair(family)[1]
    prune_delta(base, again, method="dare", sparsity=0.75, seed=3)
    assert all(torch.equal(after[n], d) for n, d in deltas(base, again).items())
    other = tiny_pair(family)[1]
    prune_delta(base, other, method="dare", sparsity=0.75, seed=4)
    assert not all(torch.equal(after[n], d) for n, d in deltas(base, other).items())


def test_sparsity_zero_keeps_the_finetuned_model():
    base, finetuned = tiny_pair()
    reference = {k: v.clone() for k, v in finetuned.state_dict().items()}
    prune_delta(base, finetuned, method="dare", sparsity=0.0)
    assert all(torch.allclose(v, reference[k], atol=1e-6) for k, v in finetuned.state_dict().items())


def test_magnitude_keeps_the_largest_delta_entries():
    base, finetuned = tiny_pair()
    before = deltas(base, finetuned)
    prune_delta(base, finetuned, method="magnitude", sparsity=0.9)
    for name, delta in deltas(base, finetuned).items():
        kept = delta != 0
        assert int(kept.sum()) == round(delta.numel() * 0.1)
        assert before[name].abs()[kept].min() >= before[name].abs()[~kept].max()
        torch.testing.assert_close(delta[kept], before[name][kept], rtol=0, atol=1e-6)


def test_wanda_weighs_the_delta_by_input_norms():
    base, finetuned = tiny_pair()
    before = deltas(base, finetuned)
    prune_delta(base, finetuned, DeltaStep(method="wanda", sparsity=0.5), calibration())
    after = deltas(base, finetuned)
    for name, delta in after.items():  # exactly half of every row (per-row, as Wanda)
        assert ((delta == 0).sum(dim=1) == delta.shape[1] // 2).all()
    # in the first block's q_proj the input norms decide: a large delta on a silent channel goes first
    name = "model.layers.0.self_attn.q_proj"
    kept = after[name] != 0
    assert not torch.equal(kept, before[name].abs() >= before[name].abs().median(dim=1, keepdim=True).values)


def test_darex_q_layer_factor_is_the_least_squares_fit():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(8, 16, generator=gen)
    x = torch.randn(64, 16, generator=gen) + torch.linspace(0, 3, 16)  # correlated, non-centred inputs
    kept = delta * (torch.rand(8, 16, generator=gen) > 0.9)
    s = layer_factor(kept, delta, x.t() @ x, 10.0)

    def error(f):
        return float(((f * kept - delta) @ x.t()).pow(2).sum())

    assert error(s) <= min(error(s * 0.99), error(s * 1.01), error(10.0))
    assert layer_factor(torch.zeros_like(delta), delta, x.t() @ x, 10.0) == 10.0


def test_darex_q_per_layer_beats_dare_on_layer_outputs_at_large_p():
    base, finetuned = tiny_pair(scale=0.05)
    dare = tiny_pair(scale=0.05)[1]
    windows = tiny_windows(4, 32)
    with torch.no_grad():
        target = finetuned(input_ids=windows).logits
    result = prune_delta(base, finetuned, DeltaStep(method="darex-q", sparsity=0.99), calibration())
    prune_delta(base, dare, DeltaStep(method="dare", sparsity=0.99))
    factors = [r.factor for r in result.layers]
    assert all(0 <= f < 100 for f in factors)  # DARE's factor would be 100
    with torch.no_grad():
        err_x = (finetuned(input_ids=windows).logits - target).pow(2).mean()
        err_dare = (dare(input_ids=windows).logits - target).pow(2).mean()
    assert err_x < err_dare


def test_darex_q_global_picks_the_factor_of_lowest_calibration_loss():
    base, finetuned = tiny_pair(scale=0.05)
    calib = calibration()
    step = DeltaStep(method="darex-q", sparsity=0.9, options={"scope": "global", "grid": 5})
    result = prune_delta(base, finetuned, step, calib)
    assert len(result.factor_losses) == 5 and 1.0 <= result.factor <= 10.0 + 1e-9
    best = min(result.factor_losses.values())
    assert result.factor_losses[round(result.factor, 6)] == best
    assert calibration_loss(finetuned, calib.source, 2) == pytest.approx(best, rel=1e-6)


def test_base_and_finetuned_of_different_shapes_are_refused():
    from transformers import AutoModelForCausalLM

    from tests.conftest import tiny_config

    base = tiny_model("llama")
    config = tiny_config("llama")
    config.intermediate_size = 96
    other = AutoModelForCausalLM.from_config(config)
    with pytest.raises(PrunekitError, match="same shapes"):
        check_pair(base, other)
    with pytest.raises(PrunekitError, match="same architecture"):
        check_pair(base, tiny_model("qwen2"))


def test_cli_merges_and_repeats_from_its_prunekit_json(smollm2_tokenizer, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).eval()
    finetuned = LlamaForCausalLM(config).eval()
    finetuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        for name, p in finetuned.named_parameters():
            if "layers" in name and p.dim() == 2:
                p.add_(torch.randn_like(p) * 0.02)
    for model, name in ((base, "base"), (finetuned, "ft")):
        model.save_pretrained(tmp_path / name)
        smollm2_tokenizer.save_pretrained(tmp_path / name)
    text = tmp_path / "text.txt"
    text.write_text("The jury praised the city's handling of the election. " * 40)
    out = tmp_path / "out"
    argv = ["delta", "--base", tmp_path / "base", "--finetuned", tmp_path / "ft", "--method", "darex-q", "--drop",
            "0.9", "--calibration", text, "--nsamples", "2", "--seqlen", "32"]
    assert main([*argv, "--out", out, "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["method"] == "darex-q" and reply["delta_after"] < reply["delta_before"] * 0.15
    manifest = json.loads((out / "prunekit.json").read_text())
    assert manifest["steps"][0]["kind"] == "delta" and manifest["result"]["base_model"] == str(tmp_path / "base")
    again = tmp_path / "again"
    assert main(["delta", "--base", tmp_path / "base", "--finetuned", tmp_path / "ft", "--recipe", out / "prunekit.json",
                 "--out", again, "--quiet"]) == 0
    first = LlamaForCausalLM.from_pretrained(out).state_dict()
    second = LlamaForCausalLM.from_pretrained(again).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # a recipe of delta steps is refused by prunekit prune with the command that runs it
    assert main(["prune", "--model", tmp_path / "ft", "--recipe", out / "prunekit.json", "--out", tmp_path / "x"]) == 2
    assert "prunekit delta --recipe" in capsys.readouterr().err


def test_sparse_delta_round_trips_against_its_base_only(tmp_path):
    from prunekit.delta.sparse import apply_sparse_delta, fingerprint, read_header, save_sparse_delta

    base, finetuned = tiny_pair()
    with torch.no_grad():  # a tied embedding that moved: stored once, added once
        finetuned.get_input_embeddings().weight[5].add_(0.5)
    prune_delta(base, finetuned, method="dare", sparsity=0.9)
    path = save_sparse_delta(tmp_path / "d.safetensors", base, finetuned, {"steps": [{"kind": "delta"}]})
    header = read_header(path)
    assert header["base_sha256"] == fingerprint(base) and header["steps"] == [{"kind": "delta"}]
    restored = tiny_model("llama")
    apply_sparse_delta(restored, path)
    for name, tensor in finetuned.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], tensor, rtol=0, atol=1e-6)
    kept = sum(int((d != 0).sum()) for d in deltas(base, finetuned).values())
    assert path.stat().st_size < (kept + 64 * 65) * 8 + 20_000  # indices + values, not the whole model
    with pytest.raises(PrunekitError, match="made against another base"):
        apply_sparse_delta(tiny_model("llama", seed=7), path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(PrunekitError, match="not a prunekit sparse delta"):
        apply_sparse_delta(tiny_model("llama"), tmp_path / "junk.safetensors")


def test_cli_sparse_delta_and_apply(smollm2_tokenizer, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).eval()
    finetuned = LlamaForCausalLM(config).eval()
    finetuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        finetuned.model.layers[1].mlp.up_proj.weight.add_(0.01)
    for model, name in ((base, "base"), (finetuned, "ft")):
        model.save_pretrained(tmp_path / name)
        smollm2_tokenizer.save_pretrained(tmp_path / name)
    delta = tmp_path / "ft.safetensors"
    common = ["delta", "--base", tmp_path / "base", "--finetuned", tmp_path / "ft", "--method", "magnitude",
              "--drop", "0.5", "--quiet"]
    assert main([*common, "--format", "sparse", "--out", delta]) == 0
    assert main([*common, "--out", tmp_path / "merged"]) == 0
    assert main(["delta", "apply", tmp_path / "base", delta, "--out", tmp_path / "applied", "--quiet"]) == 0
    merged = LlamaForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    applied = LlamaForCausalLM.from_pretrained(tmp_path / "applied").state_dict()
    assert all(torch.allclose(merged[k], applied[k], atol=1e-7) for k in merged)
    capsys.readouterr()
    assert main([*common, "--format", "sparse", "--out", delta]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["delta", "apply", tmp_path / "ft", delta, "--out", tmp_path / "wrong", "--quiet"]) == 2
    assert "made against another base" in capsys.readouterr().err
    assert not (tmp_path / "wrong").exists()


@pytest.mark.slow
def test_real_smollm2_delta_of_a_short_finetune(smollm2_path, tmp_path):
    """SmolLM2-135M and a copy whose last block trained 4 steps on Brown a: every method runs on the
    real model; the sparse delta at p = 0.99 is about 1% of the trained block, a small fraction of the
    checkpoint, and applying it gives the merged model."""
    from prunekit.core.data_sources import evaluation_windows
    from prunekit.core.train import TrainConfig, train
    from prunekit.delta.sparse import apply_sparse_delta, save_sparse_delta
    from prunekit.models import load_model, load_tokenizer
    from prunekit.training.recovery import CausalLMLoss

    tok = load_tokenizer(smollm2_path)
    base, finetuned = load_model(smollm2_path), load_model(smollm2_path)
    windows = evaluation_windows("brown:a", tok, 4, 128)
    for p in finetuned.parameters():
        p.requires_grad_(False)
    for m in finetuned.model.layers[-1].modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.requires_grad_(True)
    train(finetuned, (windows, None), TrainConfig(steps=4, batch_size=1, optimizer="adamw", lr=1e-4,
                                                   weight_decay=0.0), callbacks=[CausalLMLoss()])
    finetuned.eval().requires_grad_(False)
    reference = {k: v.clone() for k, v in finetuned.state_dict().items()}
    calib = CalibrationConfig(source=windows, nsamples=4, seqlen=128, chunk_size=2)
    losses = {"base": calibration_loss(base, windows), "finetuned": calibration_loss(finetuned, windows)}
    assert losses["finetuned"] < losses["base"]
    for method, options in (("dare", {}), ("darex-q", {}), ("darex-q", {"scope": "global", "grid": 3}),
                            ("magnitude", {}), ("wanda", {})):
        finetuned.load_state_dict(reference)
        result = prune_delta(base, finetuned, DeltaStep(method=method, sparsity=0.9, options=options), calib)
        trained = [r for r in result.layers if r.nonzero_before]
        assert len(trained) == 7 and result.delta_after < 0.12 * result.delta_before
        losses[f"{method}{options}"] = calibration_loss(finetuned, windows)
    assert all(math.isfinite(v) for v in losses.values())
    finetuned.load_state_dict(reference)
    prune_delta(base, finetuned, DeltaStep(method="dare", sparsity=0.99))
    path = save_sparse_delta(tmp_path / "d.safetensors", base, finetuned)
    block = sum(m.weight.numel() for m in finetuned.model.layers[-1].modules() if isinstance(m, torch.nn.Linear))
    assert path.stat().st_size < 0.02 * block * 8 + 100_000
    apply_sparse_delta(base, path)
    assert all(torch.allclose(base.state_dict()[k], v, atol=1e-6) for k, v in finetuned.state_dict().items())
