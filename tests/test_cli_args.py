"""The one flag-to-recipe merger (core/cli_args.py): flags are the steps' fields, a flag lands on the one
step of its kind or is refused, nothing given is ignored, and --json is one line on every command."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from prunekit.cli import build_parser, main
from prunekit.core.cli_args import add_step_flags, recipe_from_flags
from prunekit.core.errors import PrunekitError
from prunekit.core.recipe import Recipe
from prunekit.core.registry import STEPS


def _parser(steps, **kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_step_flags(parser, steps, **kwargs)
    return parser


@pytest.mark.parametrize("kind", STEPS.names())
def test_the_flags_of_a_step_kind_are_its_fields_and_old_spellings(kind):
    cls = STEPS.get(kind)
    flags = _parser([cls]).get_default("step_flags")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    assert {s.field for s in flags.specs if s.alias_of is None} == fields
    assert {s.dest: s.field for s in flags.specs if s.alias_of} == dict(cls.key_aliases)
    assert all(s.flag == ("--option" if s.field == "options" else "--" + s.field.replace("_", "-"))
               for s in flags.specs if s.alias_of is None)


def test_help_and_choices_come_from_option_metadata(capsys):
    from prunekit.training.step import TrainingStep

    with pytest.raises(SystemExit):
        _parser([TrainingStep]).parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "gradual: fraction of training when pruning starts (default: 0.1)" in text
    assert "{sgd,adamw}" in text and "--calibration" in text  # the old spelling of --calibration-examples


def _prune_args(*argv):
    return build_parser().parse_args(["prune", "--model", "m", "--out", "o", *map(str, argv)])


def _two_step_recipe():
    return Recipe.from_dict({"steps": [{"kind": "oneshot", "method": "magnitude", "sparsity": 0.5},
                                       {"kind": "structured", "method": "magnitude", "structure": "mlp",
                                        "sparsity": 0.2},
                                       {"kind": "oneshot", "method": "wanda", "sparsity": 0.6}]})


def test_a_flag_for_a_step_kind_the_recipe_holds_twice_is_refused_naming_the_steps():
    from prunekit.oneshot.step import PruneStep

    with pytest.raises(PrunekitError, match=r"--sparsity would apply to one oneshot step.*steps\[0\], steps\[2\]"):
        recipe_from_flags(_prune_args("--sparsity", "0.7"), PruneStep, _two_step_recipe())


def test_a_flag_applies_to_the_one_step_of_its_kind():
    from prunekit.structured.recipe import StructuredStep

    before = _two_step_recipe()
    after = recipe_from_flags(_prune_args("--sparsity", "0.3", "--round-to", "16", "--nsamples", "4"), StructuredStep,
                              before)
    assert after.steps[1].sparsity == 0.3 and after.steps[1].round_to == 16
    assert after.steps[0] == before.steps[0] and after.steps[2] == before.steps[2]
    assert after.calibration.nsamples == 4


def test_the_prune_command_refuses_a_multi_step_recipe_flag_in_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: [{method: magnitude, sparsity: 0.5}, {method: wanda, sparsity: 0.6}]\n")
    code = main(["prune", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--recipe", str(recipe),
                 "--sparsity", "0.7"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "steps[0], steps[1]" in err


def test_a_new_method_drops_the_recipe_methods_options():
    from prunekit.oneshot.step import PruneStep

    recipe = Recipe.from_dict({"steps": [{"method": "sparsegpt", "options": {"blocksize": 16}, "pattern": "2:4"}]})
    step = recipe_from_flags(_prune_args("--method", "magnitude"), PruneStep, recipe).steps[0]
    assert (step.method, step.options, step.pattern) == ("magnitude", {}, "unstructured")
    step = recipe_from_flags(_prune_args("--option", "percdamp=0.02"), PruneStep, recipe).steps[0]
    assert step.options == {"blocksize": 16, "percdamp": 0.02}


# one value for every flag of `prune` that the structured branch could see (a new flag must be added here)
PRUNE_VALUES = {"--method": "magnitude", "--sparsity": "0.3", "--pattern": "2:4", "--allocation": "global",
                "--owl-lambda": "0.1", "--owl-m": "3", "--targets": "re:.*proj", "--ignore": "lm_head",
                "--option": "blocksize=16", "--seed": "3", "--structure": "mlp", "--ratio": "0.3", "--remove": "1",
                "--round-to": "16", "--floor": "0.1", "--bias-compensation": None, "--widths": "uniform",
                "--calibration": "brown:r", "--nsamples": "8", "--seqlen": "64", "--chunk-size": "4",
                "--runner": "dense", "--compute-dtype": "float32", "--device": "cpu", "--stream": None}


@pytest.mark.parametrize("flag", list(PRUNE_VALUES))
def test_structured_pruning_ignores_no_flag(flag):
    """Every flag of `prune` either changes the structured recipe or is refused: none is silently ignored."""
    from prunekit.structured.cli import recipe_from_args

    base = ["--structure", "mlp,heads"] if flag != "--structure" else []
    value = [] if PRUNE_VALUES[flag] is None else [PRUNE_VALUES[flag]]
    plain = recipe_from_args(_prune_args(*base))[0].to_dict()
    try:
        flagged = recipe_from_args(_prune_args(*base, flag, *value))[0].to_dict()
    except PrunekitError as err:
        assert flag in str(err) or flag.lstrip("-").replace("-", "_") in str(err)
        return
    assert flagged != plain, f"{flag} was ignored"


def test_every_step_and_calibration_flag_of_prune_is_in_the_table():
    flags = build_parser()._subparsers._group_actions[0].choices["prune"].get_default("step_flags")
    assert {s.flag for s in flags.specs} | {"--device", "--stream"} == set(PRUNE_VALUES)


def test_structured_has_no_runner_chunk_or_compute_dtype_of_its_own():
    from prunekit.structured.cli import CALIBRATION_READ

    assert not {"chunk_size", "runner", "compute_dtype"} & set(CALIBRATION_READ)


# ---------------------------------------------------------------------------------- --json on every command
@pytest.fixture(scope="module")
def folders(tmp_path_factory, smollm2_tokenizer):
    """Two tiny Llamas (a base and a 'fine-tuned' one) with SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("cli_args")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128)
        path = root / f"model{seed}"
        LlamaForCausalLM(cfg).save_pretrained(path)
        smollm2_tokenizer.save_pretrained(path)
        paths.append(path)
    return paths


def _one_json_line(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])


CALIB = ["--nsamples", "2", "--seqlen", "32", "--calibration", "brown:r"]


def test_json_is_one_line_on_every_model_command(folders, tmp_path, capsys):
    base, tuned = folders
    data = _one_json_line(capsys, ["prune", "--model", base, "--out", tmp_path / "p", "--json", *CALIB])
    assert data["model"] == str(base) and data["out"] == str(tmp_path / "p")
    data = _one_json_line(capsys, ["prune", "--model", base, "--out", tmp_path / "s", "--structure", "mlp",
                                   "--sparsity", "0.25", "--method", "magnitude", "--option", "receipt=false",
                                   "--json", *CALIB])
    assert data["model"] == str(base)
    data = _one_json_line(capsys, ["eval", "--model", tmp_path / "p", "--text", "brown:r", "--nwindows", "1",
                                   "--seqlen", "32", "--json"])
    assert (data["model"], data["text"], data["seqlen"]) == (str(tmp_path / "p"), "brown:r", 32)
    assert "layers" in _one_json_line(capsys, ["inspect", "--model", tmp_path / "p", "--json"])
    assert "methods" in _one_json_line(capsys, ["list", "--json"])
    data = _one_json_line(capsys, ["vocab", "--model", base, "--out", tmp_path / "v", "--text", "brown:r",
                                   "--json"])
    assert data["model"] == str(base) and data["text"] == "brown:r"
    data = _one_json_line(capsys, ["delta", "--base", base, "--finetuned", tuned, "--method", "dare",
                                   "--drop", "0.5", "--format", "sparse", "--out", tmp_path / "d.safetensors",
                                   "--json"])
    assert data["base"] == str(base)
    assert "out" in _one_json_line(capsys, ["delta", "apply", base, tmp_path / "d.safetensors", "--out",
                                            tmp_path / "m", "--json"])
    assert "out" in _one_json_line(capsys, ["export", "--model", tmp_path / "s", "--format", "decilm", "--out",
                                            tmp_path / "e", "--json"])


def test_quiet_keeps_the_result_line(folders, tmp_path, capsys):
    code = main([str(a) for a in ["prune", "--model", folders[0], "--out", tmp_path / "q", "--quiet", *CALIB]])
    out = capsys.readouterr().out
    assert code == 0 and out.splitlines() == [f"saved to {tmp_path / 'q'}"]


def test_json_is_one_line_on_train_and_the_data_commands(tmp_path, capsys, monkeypatch):
    import numpy as np

    import prunekit.data.cli as data_cli
    import prunekit.training.experiment as experiment
    from prunekit.core.data_sources import TensorImageDataset

    def fake(name, split="train"):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = 64 if split == "train" else 32
        return TensorImageDataset(torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8),
                                  torch.arange(n) % 10)

    monkeypatch.setattr(data_cli, "_load_vision", fake)
    monkeypatch.setattr(experiment, "_load_data", lambda c: (*fake("x").tensors(), *fake("x", "test").tensors()))
    data = _one_json_line(capsys, ["train", "--epochs", "1", "--batch-size", "32", "--width", "4", "--threads", "1",
                                   "--json", "--out", tmp_path / "t.safetensors"])
    assert data["model"] == "cnn" and data["out"] == str(tmp_path / "t.safetensors")
    scores = tmp_path / "scores"
    assert _one_json_line(capsys, ["data", "score", "--scores", "random", "--out", scores, "--json"])["rows"] > 0
    selection = tmp_path / "keep.npz"
    data = _one_json_line(capsys, ["data", "select", "--scores", scores, "--sparsity", "0.5", "--out", selection,
                                   "--json"])
    assert data["kept"] == 32 and data["steps"][0]["kind"] == "selection"
    assert "report" in _one_json_line(capsys, ["data", "report", "--scores", scores, "--json"])
    data = _one_json_line(capsys, ["data", "train", "--selection", selection, "--budget", "equal-epochs",
                                   "--epochs", "1", "--out", tmp_path / "run", "--json"])
    assert data["kept"] == 32 and np.isfinite(data["test_accuracy"])


def test_select_flags_apply_to_the_one_selection_step_of_a_recipe(tmp_path, capsys, monkeypatch):
    from prunekit.data.select import read_selection_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: [{kind: selection, selector: easiest, sparsity: 0.1}]\n")
    parser = build_parser()
    args = parser.parse_args(["data", "select", "--scores", "s", "--recipe", str(recipe), "--sparsity", "0.4",
                              "--out", "k.npz"])
    from prunekit.data.cli import selection_recipe

    _, built = selection_recipe(args)
    assert [(s.selector, s.sparsity) for s in built.steps] == [("easiest", 0.4)]
    two = tmp_path / "two.yaml"
    two.write_text("score: el2n\nsteps: [{method: easiest, keep: 0.9}, {method: ccs, keep: 0.4, bins: 5}]\n")
    extras, old = read_selection_recipe(two)  # the older format still reads
    assert extras == {"score": "el2n"} and old.kinds() == ["selection", "selection"]
    args = parser.parse_args(["data", "select", "--scores", "s", "--recipe", str(two), "--keep", "0.5",
                              "--out", "k.npz"])
    with pytest.raises(PrunekitError, match=r"steps\[0\], steps\[1\]"):
        selection_recipe(args)
