"""The structured branch of ``prunekit prune`` and the speed receipt, on tiny models and real SmolLM2."""

import json

import pytest
import torch

import prunekit
from prunekit.cli import main
from prunekit.evaluate.speed import flops_per_token, linear_weights, speed_receipt
from prunekit.core.io import read_manifest
from prunekit.structured import prune_structured
from prunekit.core.recipe import parse_options
from prunekit.structured.recipe import parse_structure
from tests.conftest import tiny_model, tiny_windows


def test_speed_receipt_counts_what_was_removed():
    dense = tiny_model("llama")
    pruned = tiny_model("llama")
    prune_structured(pruned, method="magnitude", structure=("mlp", "heads"), ratio=0.5, allocation="uniform")
    receipt = speed_receipt(dense, pruned, seq_len=32, decode_tokens=4, runs=1, prompt_len=4)
    assert receipt.pruned.parameters == sum(p.numel() for p in pruned.parameters())
    assert receipt.parameter_ratio < 1 and receipt.flops_ratio < 1
    assert receipt.dense.prefill_s > 0 and receipt.pruned.decode_tokens_per_s > 0
    # 2 MACs per linear weight plus causal attention: 4 x heads*head_dim x mean context, per block
    attention = 2 * 4 * 4 * 16 * (32 + 1) / 2
    assert flops_per_token(dense, 32) == pytest.approx(2 * linear_weights(dense) + attention)
    assert "torch threads" in receipt.summary()


def test_option_and_structure_parsing():
    assert parse_options(["allocation=global", "floor=0.1", "bias_compensation=false"]) == {
        "allocation": "global", "floor": 0.1, "bias_compensation": False}
    assert parse_structure("mlp, heads") == ("mlp", "heads")
    with pytest.raises(ValueError, match="'filters'.*mlp, heads, blocks"):
        parse_structure("mlp,filters")
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["nokey"])


@pytest.mark.slow
def test_cli_on_smollm2_uniform_and_per_layer_round_trips(smollm2_path, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    ids = tiny_windows(1, 24, seed=1) * 7
    uni = tmp_path / "uniform"
    assert main(["prune", "--model", str(smollm2_path), "--structure", "mlp,heads", "--ratio", "0.2",
                 "--method", "magnitude", "--out", str(uni), "--option", "allocation=uniform",
                 "--option", "receipt=false", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layer_shapes"] == {} and report["out"] == str(uni)
    assert set(report["result"]["mlp_widths"]) == {1296} and set(report["result"]["heads"]) == {6}
    model = AutoModelForCausalLM.from_pretrained(uni).eval()  # plain transformers, rewritten config
    assert model.config.intermediate_size == 1296 and model.config.num_key_value_heads == 2
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (6 * 64, 576)
    same = prunekit.load_model(smollm2_path)
    prune_structured(same, method="magnitude", structure="mlp,heads", ratio=0.2, allocation="uniform")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, same(ids).logits)  # the saved model is the pruned model

    per_layer = tmp_path / "flap"
    assert main(["prune", "--model", str(smollm2_path), "--structure", "mlp,heads", "--ratio", "0.3",
                 "--method", "flap", "--out", str(per_layer), "--nsamples", "2", "--seqlen", "64",
                 "--calibration", "brown:r", "--option", "speed_runs=1", "--option", "speed_seqlen=64",
                 "--option", "speed_decode=4", "--quiet"]) == 0
    manifest = read_manifest(per_layer)
    assert manifest["layer_shapes"]["linears"] and manifest["speed"]["flops_ratio"] < 0.85
    widths = manifest["result"]["mlp_widths"]
    assert len(set(widths)) > 1 and all(w % 8 == 0 for w in widths)
    reloaded = prunekit.load_model(per_layer)
    assert reloaded.model.layers[0].mlp.down_proj.bias is not None  # FLAP bias compensation
    same = prunekit.load_model(smollm2_path)
    prune_structured(same, method="flap", structure="mlp,heads", ratio=0.3, nsamples=2, seqlen=64,
                     calibration="brown:r", tokenizer=prunekit.load_tokenizer(smollm2_path))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, same(ids).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception):  # noqa: B017 - plain transformers must not load per-layer shapes silently
        AutoModelForCausalLM.from_pretrained(per_layer)


@pytest.mark.slow
@pytest.mark.parametrize("argv, needle", [
    (["--structure", "mlp", "--ratio", "1.0"], "sparsity (structured step) must be in [0, 1), got 1.0"),
    (["--structure", "filters", "--ratio", "0.2"], "'filters'"),
    (["--structure", "mlp", "--ratio", "0.2", "--method", "sparsegpt"], "'sparsegpt'"),
    (["--structure", "heads", "--ratio", "0.9", "--option", "allocation=uniform"], "every attention head"),
])
def test_cli_bad_requests_exit_2_and_write_nothing(smollm2_path, tmp_path, capsys, argv, needle):
    out = tmp_path / "never"
    code = main(["prune", "--model", str(smollm2_path), "--out", str(out), "--method", "magnitude", *argv]
                if "--method" not in argv else ["prune", "--model", str(smollm2_path), "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_structured_recipe_yaml_python_and_flags_agree(tmp_path):
    from prunekit.cli import build_parser
    from prunekit.core.recipe import Recipe, load_recipe
    from prunekit.structured.cli import recipe_from_args
    from prunekit.structured.recipe import StructuredStep, apply_step

    path = tmp_path / "flap.yaml"
    path.write_text("steps: [{kind: structured, method: flap, structure: [mlp, heads], ratio: 0.3, allocation: blocks, "
                    "round_to: 16}]\ncalibration: {nsamples: 4, seqlen: 32}\n")
    recipe = load_recipe(path)
    step = recipe.steps[0]
    assert isinstance(step, StructuredStep) and step.structure == "mlp,heads" and step.sparsity == 0.3
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    recipe.calibration.source = tiny_windows()
    by_recipe, by_call = tiny_model("llama"), tiny_model("llama")
    result = apply_step(by_recipe, step, recipe.calibration)
    expected = prune_structured(by_call, method="flap", structure="mlp,heads", ratio=0.3, allocation="blocks",
                                round_to=16, calibration=tiny_windows(), nsamples=4, seqlen=32)
    assert result.mlp_widths == expected.mlp_widths and all(w % 16 == 0 for w in result.mlp_widths)
    ids = tiny_windows(1, 16, seed=3)
    with torch.no_grad():
        assert torch.equal(by_recipe(ids).logits, by_call(ids).logits)

    def parse(*argv):
        args = build_parser().parse_args(["prune", "--model", "m", "--out", "o", *argv])
        return recipe_from_args(args, load_recipe(args.recipe) if args.recipe else None)

    flags, receipt = parse("--recipe", str(path), "--ratio", "0.2", "--nsamples", "8",
                           "--option", "bias_compensation=false", "--option", "speed_runs=1")
    step = flags.steps[0]
    assert (step.method, step.sparsity, step.allocation, step.round_to, step.bias_compensation) == (
        "flap", 0.2, "blocks", 16, False)
    assert (flags.calibration.nsamples, flags.calibration.seqlen) == (8, 32) and receipt == {"speed_runs": 1}
    assert parse("--structure", "mlp", "--sparsity", "0.2", "--allocation", "global")[0].steps[0].allocation == "global"
    depth = parse("--structure", "blocks", "--remove", "4")[0].steps[0]
    assert (depth.remove, depth.sparsity) == (4, None)
    with pytest.raises(ValueError, match="unknown key 'ratios' in steps"):
        Recipe.from_dict({"steps": [{"kind": "structured", "ratios": 0.2}]})
    with pytest.raises(ValueError, match="'structured' section is now a step"):
        Recipe.from_dict({"structured": {"ratio": 0.2}})
    with pytest.raises(ValueError, match="got 'owl'"):
        parse("--structure", "mlp", "--ratio", "0.2", "--allocation", "owl")
    with pytest.raises(ValueError, match=r"sparsity \(structured step\) must be in \[0, 1\), got 1.0"):
        StructuredStep(sparsity=1.0)


def test_a_structured_recipe_alone_takes_the_structured_branch(tmp_path, monkeypatch):
    import prunekit.structured.cli as structured_cli

    seen = []
    monkeypatch.setattr(structured_cli, "run_prune", lambda args, recipe: seen.append(recipe.kinds()) or 0)
    path = tmp_path / "s.yaml"
    path.write_text("steps: [{kind: structured, method: flap, structure: mlp, sparsity: 0.2}]\n")
    assert main(["prune", "--model", "m", "--recipe", str(path), "--out", str(tmp_path / "o")]) == 0
    assert seen == [["structured"]]
    unstructured = tmp_path / "u.yaml"
    unstructured.write_text("steps: [{method: magnitude, sparsity: 0.5}]\n")
    assert main(["prune", "--model", str(tmp_path / "missing"), "--recipe", str(unstructured),
                 "--out", str(tmp_path / "o2")]) == 2  # the one-shot branch: missing model, exit 2
    assert seen == [["structured"]]
