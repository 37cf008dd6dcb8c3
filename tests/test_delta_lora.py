"""LoRA deltas (``prunekit delta --lora``): reading PEFT adapters, the merged delta s*B@A, pruning the
merged delta or the factors, the adapter output, bad adapters; a tiny random Llama (and GPT-2, whose
Conv1D layers store their weight transposed); one slow test on the real SmolLM2-135M."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from prunekit.cli import main
from prunekit.core.errors import PrunekitError
from prunekit.delta.lora import merged_model, prune_factors, read_adapter, save_adapter
from prunekit.delta.prune import prune_delta
from prunekit.delta.step import DeltaStep
from tests.conftest import tiny_model, tiny_windows

LLAMA_MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.v_proj"]


def write_peft(folder, model, modules, r=4, alpha=8.0, seed=0, dtype=torch.float32, **config):
    """A PEFT LoRA folder written by hand (keys spelled out here, not by prunekit's writer); returns the
    factors {module: (A, B)} in float32."""
    gen = torch.Generator().manual_seed(seed)
    tensors, factors = {}, {}
    for name in modules:
        weight = model.get_submodule(name).weight
        out, inp = weight.shape if type(model.get_submodule(name)).__name__ != "Conv1D" else weight.shape[::-1]
        a = (torch.randn(r, inp, generator=gen) * 0.1).to(dtype)
        b = (torch.randn(out, r, generator=gen) * 0.1).to(dtype)
        tensors[f"base_model.model.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b
        factors[name] = (a.float(), b.float())
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
           "target_modules": list(modules), "lora_dropout": 0.0, "bias": "none",
           "fan_in_fan_out": False, "use_rslora": False, **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return factors


def delta_of(base, model, name):
    return model.get_submodule(name).weight.detach() - base.get_submodule(name).weight.detach()


@pytest.mark.parametrize("family, modules, rslora", [
    ("llama", LLAMA_MODULES, False), ("llama", LLAMA_MODULES, True),
    ("gpt2", ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"], False)])
def test_merged_model_is_base_plus_scale_b_a(tmp_path, family, modules, rslora):
    base = tiny_model(family)
    factors = write_peft(tmp_path / "a", base, modules, r=4, alpha=8.0, use_rslora=rslora,
                         fan_in_fan_out=family == "gpt2")
    adapter = read_adapter(tmp_path / "a")
    scale = 8.0 / (math.sqrt(4) if rslora else 4)  # alpha / sqrt(r) with rsLoRA, alpha / r otherwise
    assert adapter.scale == pytest.approx(scale)
    merged = merged_model(base, adapter)
    for name, (a, b) in factors.items():
        expected = scale * (b @ a)
        if family == "gpt2":  # Conv1D stores (in x out)
            expected = expected.t()
        torch.testing.assert_close(delta_of(base, merged, name), expected, rtol=1e-5, atol=1e-6)
    adapted = {f"{m}.weight" for m in modules}
    for key, tensor in base.state_dict().items():
        if key not in adapted:
            assert torch.equal(merged.state_dict()[key], tensor), key


def test_merged_pruning_is_prune_delta_on_the_merged_model(tmp_path):
    base = tiny_model("llama")
    write_peft(tmp_path / "a", base, LLAMA_MODULES)
    adapter = read_adapter(tmp_path / "a")
    finetuned = merged_model(base, adapter)
    result = prune_delta(base, finetuned, method="dare", sparsity=0.75, seed=0)
    by_name = {r.name: r for r in result.layers}
    for name in LLAMA_MODULES:
        report = by_name[name]
        assert report.nonzero_before > 0.99 * math.prod(report.shape)  # s*B@A is dense
        assert abs(report.nonzero_after / report.nonzero_before - 0.25) < 0.03
        kept = delta_of(base, finetuned, name)
        full = adapter.delta(name)
        mask = kept != 0
        torch.testing.assert_close(kept[mask], 4 * full[mask], rtol=1e-4, atol=1e-5)
    others = [r for r in result.layers if r.name not in LLAMA_MODULES]
    assert others and all(r.nonzero_before == 0 == r.nonzero_after for r in others)


@pytest.mark.parametrize("method", ["dare", "magnitude"])
def test_factor_pruning_hits_the_asked_sparsity(tmp_path, method):
    base = tiny_model("llama")
    write_peft(tmp_path / "a", base, LLAMA_MODULES, r=8)
    adapter = read_adapter(tmp_path / "a")
    pruned, result = prune_factors(adapter, DeltaStep(method=method, sparsity=0.75, lora_prune="factors"), base)
    assert len(result.layers) == 2 * len(LLAMA_MODULES)  # one row per factor
    for name, (a, b) in adapter.factors.items():
        for before, after in zip((a, b), pruned.factors[name]):
            kept = after != 0
            if method == "magnitude":  # exactly a quarter kept, the largest
                assert int(kept.sum()) == round(before.numel() * 0.25)
                assert before.abs()[kept].min() >= before.abs()[~kept].max()
                assert torch.equal(after[kept], before[kept])
            else:  # DARE: each entry dropped with probability 0.75, the rest times 4
                assert abs(float(kept.float().mean()) - 0.25) < 0.08
                torch.testing.assert_close(after[kept], 4 * before[kept])
    assert abs(pruned.nonzero() / adapter.nonzero() - 0.25) < (0.01 if method == "magnitude" else 0.04)
    assert result.delta_after == pruned.nonzero() and result.delta_before == adapter.nonzero()


def test_dare_on_factors_keeps_the_expected_product(tmp_path):
    """Independent drops in A and B, each rescaled by 1/(1-p): the mean of B'A' over seeds tends to BA."""
    base = tiny_model("llama")
    name = LLAMA_MODULES[0]
    write_peft(tmp_path / "a", base, [name], r=4)
    adapter = read_adapter(tmp_path / "a")
    mean = torch.zeros_like(adapter.delta(name))
    seeds = 300
    for seed in range(seeds):
        pruned, _ = prune_factors(adapter, DeltaStep(method="dare", sparsity=0.5, seed=seed, lora_prune="factors"),
                                  base)
        mean += pruned.delta(name) / seeds
    error = float((mean - adapter.delta(name)).norm() / adapter.delta(name).norm())
    assert error < 0.15  # one draw is off by ~1.7 (relative); 300 draws by ~1.7/sqrt(300) = 0.1
    single = float((prune_factors(adapter, DeltaStep(method="dare", sparsity=0.5, lora_prune="factors"), base)[0]
                    .delta(name) - adapter.delta(name)).norm() / adapter.delta(name).norm())
    assert single > 3 * error


def test_adapter_round_trips_key_names_config_and_dtype(tmp_path):
    from safetensors import safe_open

    base = tiny_model("llama")
    write_peft(tmp_path / "a", base, LLAMA_MODULES, dtype=torch.bfloat16, use_rslora=True)
    adapter = read_adapter(tmp_path / "a")
    assert adapter.dtype == torch.bfloat16
    pruned, _ = prune_factors(adapter, DeltaStep(method="magnitude", sparsity=0.5, lora_prune="factors"), base)
    out = save_adapter(pruned, tmp_path / "out", manifest={"note": 1})
    with safe_open(str(tmp_path / "a" / "adapter_model.safetensors"), "pt") as f, \
            safe_open(str(out / "adapter_model.safetensors"), "pt") as g:
        assert sorted(f.keys()) == sorted(g.keys())
        assert all(g.get_tensor(k).dtype == torch.bfloat16 for k in g.keys())
    assert json.loads((out / "adapter_config.json").read_text()) == json.loads(
        (tmp_path / "a" / "adapter_config.json").read_text())
    again = read_adapter(out)
    assert all(torch.equal(again.factors[n][i], pruned.factors[n][i]) for n in pruned.factors for i in (0, 1))
    assert json.loads((out / "prunekit.json").read_text())["note"] == 1
    save_adapter(pruned, tmp_path / "out", overwrite=True)  # an adapter prunekit wrote may be replaced


def test_peft_reads_ours_and_we_read_peft(tmp_path):
    """Key names and scaling agree with PEFT itself (skipped where peft is not installed: not a dependency)."""
    peft = pytest.importorskip("peft")
    base = tiny_model("llama")
    windows = tiny_windows(2, 16)
    # ours -> peft: a hand-written adapter, factor-pruned and saved by prunekit, loaded by PeftModel
    write_peft(tmp_path / "a", base, LLAMA_MODULES, use_rslora=True)
    pruned, _ = prune_factors(read_adapter(tmp_path / "a"), DeltaStep(method="dare", sparsity=0.5,
                                                                      lora_prune="factors"), base)
    save_adapter(pruned, tmp_path / "ours")
    with torch.no_grad():
        expected = merged_model(base, pruned)(input_ids=windows).logits
        got = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "ours").eval()(input_ids=windows).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # peft -> ours: an adapter PEFT saved (B made nonzero), merged by prunekit and by merge_and_unload
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "up_proj"], lora_dropout=0.0)
    model = peft.get_peft_model(tiny_model("llama"), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "theirs")
    adapter = read_adapter(tmp_path / "theirs")
    assert len(adapter.factors) == 4 and adapter.scale == 4.0
    reference = model.merge_and_unload().state_dict()
    ours = merged_model(tiny_model("llama"), adapter).state_dict()
    assert all(torch.allclose(ours[k], reference[k], atol=1e-6) for k in reference)


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "use_dora True is not supported"),
    ({"bias": "all"}, "bias 'all' is not supported"),
    ({"r": 0}, "r must be a positive int, got 0"),
    ({"lora_alpha": "x"}, "lora_alpha must be a positive float"),
    ({"peft_type": "IA3"}, "peft_type 'IA3' is not a LoRA adapter"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"r": 8}, "rank r = 8 needs A"),
])
def test_bad_adapter_config_is_one_line(tmp_path, change, message):
    base = tiny_model("llama")
    write_peft(tmp_path / "a", base, LLAMA_MODULES[:1], **{k: v for k, v in change.items() if k != "r"})
    if "r" in change:
        cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
        (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, "r": change["r"]}))
    with pytest.raises(PrunekitError, match=message):
        read_adapter(tmp_path / "a")


def test_bad_adapter_files_and_modules(tmp_path):
    from prunekit.delta.lora import check_adapter

    base = tiny_model("llama")
    with pytest.raises(PrunekitError, match="is not a folder"):
        read_adapter(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunekitError, match="has no adapter_config.json"):
        read_adapter(tmp_path / "empty")
    write_peft(tmp_path / "bin", base, LLAMA_MODULES[:1])
    (tmp_path / "bin" / "adapter_model.safetensors").rename(tmp_path / "bin" / "adapter_model.bin")
    with pytest.raises(PrunekitError, match="only safetensors is read"):
        read_adapter(tmp_path / "bin")
    write_peft(tmp_path / "junk", base, LLAMA_MODULES[:1])
    (tmp_path / "junk" / "adapter_model.safetensors").write_bytes(b"\x00" * 32)
    with pytest.raises(PrunekitError, match="cannot read"):
        read_adapter(tmp_path / "junk")
    # an embedding LoRA tensor, a module with only A
    for name, tensors in (("emb", {"base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(4, 128)}),
                          ("half", {"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(4, 64)})):
        write_peft(tmp_path / name, base, LLAMA_MODULES[:1])
        save_file(tensors, str(tmp_path / name / "adapter_model.safetensors"))
    with pytest.raises(PrunekitError, match="'base_model.model.model.embed_tokens.lora_embedding_A' is not a LoRA "):
        read_adapter(tmp_path / "emb")
    with pytest.raises(PrunekitError, match="module 'model.layers.0.mlp.up_proj' has no lora_B.weight"):
        read_adapter(tmp_path / "half")
    # modules the base does not have, or of other shapes
    write_peft(tmp_path / "other", tiny_model("qwen2"), ["model.layers.0.self_attn.q_proj"])
    write_peft(tmp_path / "gpt2", tiny_model("gpt2"), ["transformer.h.0.attn.c_attn"])
    with pytest.raises(PrunekitError, match="module 'transformer.h.0.attn.c_attn' is not in the base model"):
        check_adapter(read_adapter(tmp_path / "gpt2"), base)
    big = tiny_model("llama")
    adapter = read_adapter(tmp_path / "other")
    a, b = adapter.factors["model.layers.0.self_attn.q_proj"]
    adapter.factors["model.layers.0.self_attn.q_proj"] = (torch.zeros(4, 32), b)
    with pytest.raises(PrunekitError, match=r"lora_B @ lora_A of shape \[64, 32\] but the base layer's weight is "
                                            r"\[64, 64\]"):
        check_adapter(adapter, big)
    with pytest.raises(PrunekitError, match="is a LlamaRMSNorm, not a linear layer"):
        adapter.factors = {"model.norm": (a, b)}
        check_adapter(adapter, big)
    # factor pruning runs the methods that read no calibration data
    with pytest.raises(PrunekitError, match="method 'wanda' reads calibration data"):
        DeltaStep(method="wanda", lora_prune="factors")


@pytest.fixture
def tiny_folders(smollm2_tokenizer, tmp_path):
    """A tiny Llama with the SmolLM2 tokenizer saved as a model folder, and a LoRA adapter of it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).eval()
    base.save_pretrained(tmp_path / "base")
    smollm2_tokenizer.save_pretrained(tmp_path / "base")
    modules = [f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "self_attn.v_proj",
                                                                   "mlp.gate_proj")]
    write_peft(tmp_path / "lora", base, modules, r=4, alpha=8)
    return tmp_path, base


def test_cli_lora_merged_sparse_and_factors(tiny_folders, capsys):
    from transformers import LlamaForCausalLM

    from prunekit.delta.lora import read_adapter as read

    tmp_path, base = tiny_folders
    common = ["delta", "--base", tmp_path / "base", "--lora", tmp_path / "lora", "--method", "dare", "--drop", "0.9"]
    # merged: the merged model, and its sparse delta that `delta apply` adds back
    assert main([*common, "--out", tmp_path / "merged", "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["lora"]["r"] == 4 and reply["delta_after"] < 0.12 * reply["delta_before"]
    assert main([*common, "--format", "sparse", "--out", tmp_path / "d.safetensors", "--quiet"]) == 0
    assert main(["delta", "apply", tmp_path / "base", tmp_path / "d.safetensors", "--out", tmp_path / "applied",
                 "--quiet"]) == 0
    merged = LlamaForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    applied = LlamaForCausalLM.from_pretrained(tmp_path / "applied").state_dict()
    assert all(torch.allclose(merged[k], applied[k], atol=1e-7) for k in merged)
    manifest = json.loads((tmp_path / "merged" / "prunekit.json").read_text())
    assert manifest["steps"][0]["lora_prune"] == "merged" and manifest["result"]["lora"]["modules"] == 6
    # factors: a PEFT folder (the default output), at the asked sparsity, repeatable from its prunekit.json
    assert main([*common, "--lora-prune", "factors", "--out", tmp_path / "fa", "--quiet"]) == 0
    pruned = read(tmp_path / "fa")
    assert abs(pruned.nonzero() / pruned.parameters() - 0.1) < 0.03
    assert main(["delta", "--base", tmp_path / "base", "--lora", tmp_path / "lora", "--recipe",
                 tmp_path / "fa" / "prunekit.json", "--out", tmp_path / "fa2", "--quiet"]) == 0
    again = read(tmp_path / "fa2")
    assert all(torch.equal(again.factors[n][i], pruned.factors[n][i]) for n in pruned.factors for i in (0, 1))
    assert main([*common, "--lora-prune", "factors", "--format", "merged", "--out", tmp_path / "fm", "--quiet"]) == 0
    factor_merged = LlamaForCausalLM.from_pretrained(tmp_path / "fm")
    expected = merged_model(base, pruned).state_dict()
    assert all(torch.allclose(factor_merged.state_dict()[k], v, atol=1e-6) for k, v in expected.items())
    assert main([*common, "--lora-prune", "factors", "--out", tmp_path / "fa", "--overwrite", "--quiet"]) == 0
    # bad combinations: one line, exit 2, nothing written
    capsys.readouterr()
    for argv, message in (
            ([*common, "--format", "adapter", "--out", tmp_path / "x"], "--format adapter writes a LoRA adapter"),
            ([*common, "--finetuned", tmp_path / "base", "--out", tmp_path / "x"], "not both"),
            ([*common[:-4], "--method", "wanda", "--lora-prune", "factors", "--out", tmp_path / "x"],
             "method 'wanda' reads calibration data"),
            ([*common, "--lora-prune", "factors", "--out", tmp_path / "fa"], "already exists"),
            ([*common, "--out", tmp_path / "lora" / "x"], "inside the input model folder")):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["delta", "--base", tmp_path / "base", "--finetuned", tmp_path / "base", "--lora-prune", "factors",
                 "--out", tmp_path / "x"]) == 2
    assert "give --lora ADAPTER" in capsys.readouterr().err


def test_help_explains_lora(capsys):
    with pytest.raises(SystemExit):
        main(["delta", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--lora LORA" in text and "--lora-prune {merged,factors}" in text and "s*B@A" in text


@pytest.mark.slow
def test_real_smollm2_lora_adapter(smollm2_path, tmp_path):
    """A small LoRA adapter of SmolLM2-135M (r 4 on the 7 projections of the last 2 blocks) trained 6 steps
    on Brown a with the core loop, saved in PEFT's format: it lowers the loss on its training windows;
    merged it is the base plus s*B@A; DARE 0.9 pruned merged and as factors keeps most of the gain and
    the factors' sparsity; PEFT (when installed) loads the pruned adapter to the same logits."""
    from prunekit.core.data_sources import evaluation_windows
    from prunekit.core.train import TrainConfig, train
    from prunekit.delta.lora import LoraAdapter, write_adapter_files
    from prunekit.delta.prune import calibration_loss
    from prunekit.models import load_model, load_tokenizer
    from prunekit.training.recovery import CausalLMLoss, MaskedLoRA, add_masked_lora

    tok = load_tokenizer(smollm2_path)
    base, model = load_model(smollm2_path), load_model(smollm2_path)
    windows = evaluation_windows("brown:a", tok, 4, 128)
    names = [f"model.layers.{i}.{m}" for i in (28, 29) for m in ("self_attn.q_proj", "self_attn.k_proj",
             "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    model.requires_grad_(False)
    torch.manual_seed(0)
    add_masked_lora(model, {n: torch.zeros(model.get_submodule(n).weight.shape, dtype=torch.bool) for n in names},
                    rank=4, alpha=8)
    train(model, (windows, None), TrainConfig(steps=6, batch_size=1, optimizer="adamw", lr=2e-3, weight_decay=0.0),
          callbacks=[CausalLMLoss()])
    factors = {n: (model.get_submodule(n).lora_a.detach().clone(), model.get_submodule(n).lora_b.detach().clone())
               for n in names if isinstance(model.get_submodule(n), MaskedLoRA)}
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
              "target_modules": names, "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "lora_dropout": 0.0}
    (tmp_path / "lora").mkdir()
    write_adapter_files(tmp_path / "lora", LoraAdapter(config, factors))
    adapter = read_adapter(tmp_path / "lora")
    assert len(adapter.factors) == 14 and adapter.parameters() == sum(a.numel() + b.numel() for a, b in factors.values())
    finetuned = merged_model(base, adapter)
    for name, (a, b) in factors.items():
        torch.testing.assert_close(delta_of(base, finetuned, name), 2.0 * (b @ a), rtol=1e-4, atol=1e-6)
    loss = {"base": calibration_loss(base, windows), "lora": calibration_loss(finetuned, windows)}
    assert loss["lora"] < loss["base"] - 0.05
    result = prune_delta(base, finetuned, DeltaStep(method="dare", sparsity=0.9))
    assert sum(r.nonzero_before > 0 for r in result.layers) == 14
    assert result.delta_after < 0.11 * result.delta_before
    loss["merged dare 0.9"] = calibration_loss(finetuned, windows)
    pruned, fres = prune_factors(adapter, DeltaStep(method="dare", sparsity=0.9, lora_prune="factors"), base)
    assert abs(pruned.nonzero() / adapter.parameters() - 0.1) < 0.01 and fres.delta_after == pruned.nonzero()
    loss["factors dare 0.9"] = calibration_loss(merged_model(base, pruned), windows)
    assert all(math.isfinite(v) for v in loss.values()), loss
    assert loss["merged dare 0.9"] < loss["base"], loss  # DARE at 0.9 keeps part of the gain
    out = save_adapter(pruned, tmp_path / "pruned")
    try:
        import peft
    except ImportError:
        return
    with torch.no_grad():
        got = peft.PeftModel.from_pretrained(load_model(smollm2_path), out).eval()(input_ids=windows[:1]).logits
        expected = merged_model(base, pruned)(input_ids=windows[:1]).logits
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
