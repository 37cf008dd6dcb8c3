import argparse
import json

import pytest
import torch

from prunekit.training import cli


def run_cli(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, named", [
    (["--sparsity", "1.5"], "1.5"),
    (["--sparsity", "lots"], "lots"),
    (["--model", "vgg"], "vgg"),
    (["--dataset", "cifar10"], "cifar10"),
    (["--epochs", "-1"], "-1"),
    (["--batch-size", "3.5"], "3.5"),
    (["--method", "snip"], "snip"),
    (["--depth", "9"], "9"),
    (["--scope", "global", "--floor", "0.5", "--sparsity", "0.9"], "0.5"),
    (["--recovery", "perp"], "perp"),
    (["--lr", "nan"], "nan"),
    (["--method", "imp", "--rate", "1.2"], "1.2"),
    (["--criterion", "snip"], "snip"),
    (["--criterion", "wanda", "--calibration", "0"], "0"),
    (["--method", "imp", "--criterion", "wanda"], "wanda"),
])
def test_bad_flag_values_exit_2_with_one_line_naming_the_value(argv, named, capsys):
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert named in err and err.startswith("prunekit train: error:")


def test_existing_output_or_a_file_as_folder_is_refused_before_training(tmp_path, capsys):
    existing = tmp_path / "model.safetensors"
    existing.write_bytes(b"keep me")
    code, out, err = run_cli(["--output", str(existing)], capsys)
    assert code == 2 and out == "" and str(existing) in err and len(err.strip().splitlines()) == 1
    assert "already exists" in err
    code, out, err = run_cli(["--output", str(existing), "--overwrite"], capsys)  # not a file prunekit wrote
    assert code == 2 and "is not a file prunekit train wrote" in err
    assert existing.read_bytes() == b"keep me"
    code, _, err = run_cli(["--output", str(existing / "model.safetensors")], capsys)
    assert code == 2 and "is a file, not a folder" in err
    code, _, err = run_cli(["--output", str(tmp_path / "model.pt")], capsys)
    assert code == 2 and "must end in .safetensors" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_bad_recipes_exit_2(tmp_path, capsys):
    bad_value = tmp_path / "r.yaml"
    bad_value.write_text("method: gradual\nsparsity: 2\n")
    unknown = tmp_path / "u.json"
    unknown.write_text(json.dumps({"sparsity": 0.5, "learning_rate": 0.1}))
    broken = tmp_path / "b.json"
    broken.write_text("{not json")
    for argv, named in ((["--recipe", str(bad_value)], "2"), (["--recipe", str(unknown)], "learning_rate"),
                        (["--recipe", str(broken)], "b.json"), (["--recipe", str(tmp_path / "nope.yaml")], "nope")):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and named in err and len(err.strip().splitlines()) == 1


def test_add_parser_plugs_into_a_parent_cli():
    parser = argparse.ArgumentParser(prog="prunekit")
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    args = parser.parse_args(["train", "--method", "imp", "--rounds", "2"])
    assert args.func is cli.run
    config = cli.resolve_config(args)
    assert config["method"] == "imp" and config["rounds"] == 2 and config["sparsity"] == 0.9


@pytest.mark.slow
def test_recipe_plus_flag_override_trains_and_prunes_real_fashion_mnist(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: gradual\nschedule: cubic\nsparsity: 0.5\nscope: global\nfloor: 0.05\n"
                      "epochs: 1\nbatch-size: 64\nlimit: 1024\nfrequency: 2\n")
    out_file = tmp_path / "model.safetensors"
    code, out, _ = run_cli(["--recipe", str(recipe), "--sparsity", "0.8", "--quiet", "--json", "--threads", "1",
                            "--output", str(out_file)], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["method"] == "gradual"
    assert result["sparsity"] == pytest.approx(0.8, abs=1e-3)  # the flag won over the recipe
    assert result["accuracy"] > 0.3  # 16 steps on 1k real images: well above chance (0.1)
    from prunekit.core.checkpoint import load_state

    assert out_file.read_bytes()[8:9] == b"{"  # a safetensors header, not a torch zip holding data.pkl
    saved = load_state(out_file)
    assert saved["config"]["sparsity"] == pytest.approx(0.8)
    for name, mask in saved["masks"].items():
        weight = saved["model"][f"{name}.weight"]
        assert torch.all(weight[mask] == 0)  # True = pruned


@pytest.mark.slow
def test_one_shot_gblm_from_the_cli_on_real_fashion_mnist(capsys):
    """The foundation's data-aware GBLM criterion, scored on 32 training images, then fine-tuned."""
    code, out, _ = run_cli(["--method", "oneshot", "--criterion", "gblm", "--calibration", "32", "--sparsity", "0.7",
                            "--recovery", "finetune", "--recovery-epochs", "0.25", "--epochs", "1", "--batch-size", "64",
                            "--limit", "1024", "--quiet", "--json", "--threads", "1"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert result["accuracy"] > 0.3
