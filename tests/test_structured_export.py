"""``prunekit export --format decilm`` (issue 12): the DeciLM / Nemotron-NAS layout that serving engines read
for Llama models whose blocks differ. The layout is checked against the published schema (the fields and
rules of NVIDIA's ``block_config.py``, and how vLLM's ``nemotron_nas.py`` sizes every tensor from it), and
the folder reloads into prunekit with the logits of the pruned model."""

import json
import warnings

import pytest
import torch
from safetensors import safe_open

import prunekit
from prunekit.cli import main
from prunekit.core.families import adapter_for
from prunekit.structured import prune_structured
from prunekit.structured.export import export_decilm, pad_for_decilm
from tests.conftest import tiny_model, tiny_windows

IDS = tiny_windows(2, 16, seed=5)
# The published schema (Llama-3.1-Nemotron-51B's block_config.py): every field a sub-block may have.
ATTENTION_FIELDS = {"no_op", "replace_with_linear", "sparsify", "n_heads_in_group", "window_length",
                    "num_sink_tokens", "use_prefill_window_in_sink_attention", "unshifted_sink"}
FFN_FIELDS = {"no_op", "replace_with_linear", "sparsify", "ffn_mult"}


def published_intermediate_size(ffn_mult: float, hidden: int) -> int:
    """``_ffn_mult_to_intermediate_size`` as the published code and vLLM write it."""
    n = int(2 * ffn_mult * hidden / 3)
    return n if n % 256 == 0 else n + 256 - n % 256


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def pruned_llama():
    """Per-block MLP widths (global allocation, block 0 made more important), half the heads removed
    (whole kv groups) and compensation biases on o_proj and down_proj."""
    model = tiny_model("llama")
    with torch.no_grad():
        for module in adapter_for(model).linears(0).values():
            module.weight *= 4
    prune_structured(model, method="magnitude", structure="mlp", ratio=0.4, allocation="global", bias_compensation=True,
                     calibration=tiny_windows(), nsamples=8, seqlen=32)
    prune_structured(model, method="magnitude", structure="heads", ratio=0.5, allocation="uniform",
                     bias_compensation=True, calibration=tiny_windows(), nsamples=8, seqlen=32)
    assert len({adapter_for(model).mlp_width(i) for i in range(2)}) == 2
    return model


def test_decilm_export_follows_the_published_schema(tmp_path):
    model = pruned_llama()
    result = export_decilm(model, tmp_path / "decilm")
    config = json.loads((tmp_path / "decilm" / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas" and config["architectures"] == ["DeciLMForCausalLM"]
    assert len(config["block_configs"]) == config["num_hidden_layers"] == 2
    hidden, n_heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // n_heads
    assert n_heads * head_dim == hidden  # what the published configuration code derives head_dim from
    with safe_open(str(tmp_path / "decilm" / "model.safetensors"), framework="pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    for i, block in enumerate(config["block_configs"]):
        attention, ffn = block["attention"], block["ffn"]
        assert set(attention) <= ATTENTION_FIELDS and set(ffn) <= FFN_FIELDS
        for part in (attention, ffn):  # SubblockConfig.__post_init__
            assert not (part["no_op"] and part["replace_with_linear"])
        assert isinstance(attention["n_heads_in_group"], int) and ffn["ffn_mult"] == round(ffn["ffn_mult"], 6)
        n_kv = n_heads // attention["n_heads_in_group"]  # vLLM: DeciLMDecoderLayer
        inter = published_intermediate_size(ffn["ffn_mult"], hidden)
        bias_a, bias_m = config["attention_bias"], config["mlp_bias"]
        p = f"model.layers.{i}."
        expected = {"self_attn.q_proj": [n_heads * head_dim, hidden], "self_attn.k_proj": [n_kv * head_dim, hidden],
                    "self_attn.v_proj": [n_kv * head_dim, hidden], "self_attn.o_proj": [hidden, n_heads * head_dim],
                    "mlp.gate_proj": [inter, hidden], "mlp.up_proj": [inter, hidden], "mlp.down_proj": [hidden, inter]}
        for name, shape in expected.items():
            assert shapes[f"{p}{name}.weight"] == shape, name
            assert (f"{p}{name}.bias" in shapes) == (bias_a if "attn" in name else bias_m), name
    assert config["attention_bias"] and config["mlp_bias"]  # the compensation biases, as the global flags
    assert result.padded_heads == 4 and result.mlp_widths == [256, 256]  # 2 of 4 heads per block, 256-multiples


def test_decilm_export_reloads_into_prunekit_with_the_pruned_logits(tmp_path):
    model = pruned_llama()
    padded = pad_for_decilm_copy(model)
    export_decilm(model, tmp_path / "decilm")
    for reloaded in (prunekit.load_pretrained(tmp_path / "decilm"), prunekit.load_model(tmp_path / "decilm")):
        assert torch.equal(logits(reloaded), logits(padded))  # the layout round trip is lossless
        # the zero padding adds nothing; only the float summation order changes
        torch.testing.assert_close(logits(reloaded), logits(model), atol=1e-5, rtol=0)
    resaved = tmp_path / "resaved"
    reloaded.save_pretrained(resaved)  # back to a prunekit per-layer folder (widths in config.json)
    torch.testing.assert_close(logits(prunekit.load_pretrained(resaved)), logits(model), atol=1e-5, rtol=0)


def pad_for_decilm_copy(model):
    import copy

    padded = copy.deepcopy(model)
    pad_for_decilm(padded)
    return padded


@pytest.mark.parametrize("change, match", [
    ({"no_op": True}, "no_op / replace_with_linear"),
    ({"window_length": 128, "num_sink_tokens": 4}, "window or sink attention"),
    ({"n_heads_in_group": 3}, "must divide num_attention_heads"),
    ({"heads_per_group": 2}, "keys the published schema lacks"),
])
def test_decilm_blocks_prunekit_cannot_rebuild_are_one_line_errors(tmp_path, change, match):
    export_decilm(pruned_llama(), tmp_path / "decilm")
    file = tmp_path / "decilm" / "config.json"
    config = json.loads(file.read_text())
    config["block_configs"][1]["attention"].update(change)
    file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match) as info:
        prunekit.load_pretrained(tmp_path / "decilm")
    assert "\n" not in str(info.value)


def test_export_refuses_what_the_layout_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="writes Llama models"):
        export_decilm(tiny_model("opt"), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_export_cli(tmp_path, capsys):
    from prunekit.core.io import save_pretrained

    source = save_pretrained(pruned_llama(), tmp_path / "pruned")
    out = tmp_path / "decilm"
    assert main(["export", "--model", str(source), "--format", "decilm", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "nemotron-nas" in printed and "not run in them here" in printed
    assert main(["inspect", "--model", str(out), "--json"]) == 0  # every prunekit command reads the folder
    capsys.readouterr()
    assert main(["export", "--model", str(source), "--format", "decilmm", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'decilm'" in capsys.readouterr().err
    assert main(["export", "--model", str(source), "--format", "decilm", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_decilm_folder_gives_its_tokenizer_without_a_deprecation_warning(tmp_path, smollm2_tokenizer):
    export_decilm(pruned_llama(), tmp_path / "decilm", tokenizer=smollm2_tokenizer)
    with warnings.catch_warnings():  # AutoTokenizer reading the DeciLM config.json itself warns of rope_scaling
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        tokenizer = prunekit.load_tokenizer(tmp_path / "decilm", check_fits=False)  # a toy model of 128 rows
    assert tokenizer("a DeciLM folder").input_ids == smollm2_tokenizer("a DeciLM folder").input_ids
