"""Structured outputs in the Hugging Face ecosystem (issue 12): per-layer widths carried in config.json
survive save_pretrained; --widths uniform writes folders plain transformers loads; the CLI says which."""

import json

import pytest
import torch

import prunekit
from prunekit.cli import main
from prunekit.core.families import adapter_for
from prunekit.core.io import read_layer_shapes, save_pretrained
from prunekit.core.shapes import CONFIG_KEY
from prunekit.structured import prune_structured
from tests.conftest import FAMILIES, tiny_model, tiny_windows

IDS = tiny_windows(2, 16, seed=5)


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def per_layer_model(family):
    """A tiny model pruned to different MLP widths per block, with compensation biases."""
    model = tiny_model(family)
    with torch.no_grad():  # block 0 matters more to the magnitude criterion: it keeps more channels
        for module in adapter_for(model).linears(0).values():
            module.weight *= 4
    result = prune_structured(model, method="magnitude", structure=("mlp", "heads"), ratio=0.4, allocation="global",
                              bias_compensation=True, calibration=tiny_windows(), nsamples=8, seqlen=32)
    assert len(set(result.mlp_widths)) > 1 and result.layer_shapes
    return model, result


@pytest.mark.parametrize("family", FAMILIES)
def test_per_layer_widths_survive_save_pretrained(family, tmp_path):
    """load -> the model's own save_pretrained (what a Trainer checkpoint, push_to_hub or a PEFT merge
    does) -> load gives identical logits; the widths live in config.json, not only in prunekit.json."""
    from transformers import AutoModelForCausalLM

    model, result = per_layer_model(family)
    out = save_pretrained(model, tmp_path / "pruned")
    assert json.loads((out / "config.json").read_text())[CONFIG_KEY] == result.layer_shapes
    loaded = prunekit.load_pretrained(out)
    resaved = tmp_path / "resaved"
    loaded.save_pretrained(resaved)  # plain transformers: no prunekit.json
    assert not (resaved / "prunekit.json").exists() and read_layer_shapes(resaved) == result.layer_shapes
    for again in (prunekit.load_pretrained(resaved), prunekit.load_model(resaved)):
        assert sum(p.numel() for p in again.parameters()) == result.parameters_after
        assert torch.equal(logits(again), logits(model))
    with pytest.raises(RuntimeError, match="mismatch"):  # never a silent wrong load
        AutoModelForCausalLM.from_pretrained(resaved)


def test_older_folders_and_folders_that_lost_their_widths(tmp_path):
    """A folder whose config.json lacks the shapes loads from prunekit.json (folders written before
    the shapes moved into the config), and the loaded model carries them on; with neither, loading
    is a one-line error that says what is missing."""
    model, result = per_layer_model("llama")
    out = save_pretrained(model, tmp_path / "pruned", manifest={"layer_shapes": result.layer_shapes})
    config = json.loads((out / "config.json").read_text())
    del config[CONFIG_KEY]
    (out / "config.json").write_text(json.dumps(config))
    loaded = prunekit.load_pretrained(out)
    assert torch.equal(logits(loaded), logits(model))
    assert getattr(loaded.config, CONFIG_KEY) == result.layer_shapes
    (out / "prunekit.json").unlink()
    for load in (prunekit.load_pretrained, prunekit.load_model):
        with pytest.raises(ValueError, match="prunekit_layer_shapes") as info:
            load(out)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("family, structure, compensate", [
    ("llama", ("mlp", "heads"), None),  # FLAP's compensation -> attention_bias and mlp_bias
    ("qwen3", ("mlp", "heads"), False),
    ("mistral", ("mlp", "heads"), False),
    ("opt", ("mlp",), None),  # OPT, GPT-2 and GPT-NeoX have their own biases already
    ("gpt2", ("mlp",), None),
    ("gpt_neox", ("mlp", "blocks"), None),
])
def test_uniform_widths_load_with_stock_from_pretrained(family, structure, compensate, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    result = prune_structured(model, method="flap", structure=structure, ratio=0.3, remove=1 if "blocks" in structure
                              else None, widths="uniform", bias_compensation=compensate,
                              calibration=tiny_windows(), nsamples=8, seqlen=32)
    assert result.layer_shapes == {} and len(set(result.mlp_widths)) == 1 and len(set(result.heads)) == 1
    assert result.parameters_after < result.parameters_before
    out = save_pretrained(model, tmp_path / "uniform")
    assert CONFIG_KEY not in json.loads((out / "config.json").read_text())
    stock = AutoModelForCausalLM.from_pretrained(out).eval()  # no prunekit, no remote code
    assert torch.equal(logits(stock), logits(model))
    if family == "llama":  # the compensation biases live in Llama's own bias parameters
        assert stock.config.mlp_bias and stock.config.attention_bias
        assert stock.model.layers[0].mlp.down_proj.bias.abs().sum() > 0
        assert stock.model.layers[0].mlp.up_proj.bias.abs().sum() == 0


def test_uniform_allocation_with_compensation_becomes_a_plain_folder():
    """Per-layer is the default, but when the widths come out uniform and only compensation biases
    differ, the bias flags describe them: the folder needs no prunekit either."""
    model = tiny_model("llama")
    result = prune_structured(model, method="flap", structure=("mlp", "heads"), ratio=0.3, allocation="uniform",
                              calibration=tiny_windows(), nsamples=8, seqlen=32)
    assert result.layer_shapes == {} and model.config.mlp_bias and model.config.attention_bias


@pytest.mark.parametrize("family, kwargs, match", [
    ("mistral", {}, "Mistral has no bias on down_proj.*bias_compensation=false"),
    ("qwen2", {"structure": ("heads",)}, "Qwen2 has no bias on o_proj"),
    ("opt", {"bias_compensation": False}, "OPT derives its head size"),
    ("llama", {"allocation": "global"}, "allocation 'global' gives each layer its own"),
])
def test_uniform_widths_refuses_what_plain_transformers_cannot_build(family, kwargs, match):
    model = tiny_model(family)
    before = [p.clone() for p in model.parameters()]
    kwargs = {"structure": ("mlp", "heads"), **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        prune_structured(model, method="flap", ratio=0.3, widths="uniform", calibration=tiny_windows(), nsamples=8,
                         seqlen=32, **kwargs)
    assert "\n" not in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, smollm2_tokenizer):
    """A tiny random Llama with SmolLM2's tokenizer, saved once."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("widths, kind", [("uniform", "a plain transformers folder"), (None, "per-layer widths")])
def test_cli_says_which_folder_it_wrote_and_how_to_load_it(tiny_folder, tmp_path, capsys, widths, kind):
    out = tmp_path / "out"
    argv = ["prune", "--model", str(tiny_folder), "--out", str(out), "--structure", "mlp,heads", "--sparsity", "0.3",
            "--calibration", "brown:r", "--nsamples", "2", "--seqlen", "32", "--option", "receipt=false"]
    if widths:
        argv += ["--widths", widths]
    else:  # per-layer: make block 0 matter more so that global allocation gives the blocks different widths
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tiny_folder)
        with torch.no_grad():
            for module in adapter_for(model).linears(0).values():
                module.weight *= 4
        source = tmp_path / "source"
        model.save_pretrained(source)
        prunekit.load_tokenizer(tiny_folder).save_pretrained(source)
        argv[2] = str(source)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"saved to {out}: {kind}" in printed
    assert ("AutoModelForCausalLM.from_pretrained" if widths else "prunekit.load_pretrained") in printed
    assert main([*argv, "--overwrite", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["folder"].startswith(kind) and (report["layer_shapes"] == {}) == bool(widths)


def test_cli_widths_uniform_refusals_come_before_the_model_loads(tiny_folder, tmp_path, capsys, monkeypatch):
    import prunekit.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "never"
    code = main(["prune", "--model", str(tiny_folder), "--out", str(out), "--structure", "mlp", "--sparsity", "0.3",
                 "--widths", "uniform", "--allocation", "global"])
    assert code == 2 and "allocation 'global'" in capsys.readouterr().err and not out.exists()
    assert main(["prune", "--model", str(tiny_folder), "--out", str(out), "--method", "wanda",
                 "--widths", "uniform"]) == 2
    assert "--widths 'uniform' applies only to structured pruning" in capsys.readouterr().err


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_saved_folders_get_the_usual_permissions(tmp_path, umask, mode):
    """Like save_pretrained's own folders (mkdir under the umask), not the 0700 of a temporary folder."""
    import os
    import stat

    old = os.umask(umask)
    try:
        out = save_pretrained(tiny_model("llama"), tmp_path / "out")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode


def test_inspect_says_how_a_per_layer_folder_loads(tmp_path, capsys):
    model, _ = per_layer_model("llama")
    out = save_pretrained(model, tmp_path / "pruned")
    assert main(["inspect", "--model", str(out)]) == 0
    assert "prunekit.load_pretrained(path)" in capsys.readouterr().out
    assert main(["inspect", "--model", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["folder"] == "per-layer"
