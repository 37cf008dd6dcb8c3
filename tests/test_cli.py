"""CLI: every bad input is one line on stderr, exit code 2, and nothing written."""

import json
import os

import pytest
import torch

from prunekit.cli import main


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, smollm2_tokenizer):
    """A tiny random Llama (hidden 60, so M=8 does not divide it) with SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=60, intermediate_size=120, num_hidden_layers=2,
                      num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=256)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def small(folder, out, *extra):
    return ["prune", "--model", folder, "--out", out, "--nsamples", "4", "--seqlen", "32", "--quiet", *extra]


BAD = {
    "sparsity above 1": (["--sparsity", "1.5"], "sparsity (oneshot step) must be in [0, 1)"),
    "sparsity 1": (["--sparsity", "1"], "sparsity (oneshot step) must be in [0, 1)"),
    "negative sparsity": (["--sparsity", "-0.1"], "sparsity (oneshot step) must be in [0, 1)"),
    "N >= M": (["--pattern", "4:4"], "need 0 < N < M"),
    "M does not divide width": (["--pattern", "2:8"], "does not divide its input width 60"),
    "unknown method": (["--method", "wandaa"], "did you mean 'wanda'"),
    "unknown allocation": (["--allocation", "owll"], "got 'owll'; did you mean 'owl'?"),
    "unknown option": (["--method", "sparsegpt", "--option", "dampp=0.1"], "unknown option 'dampp'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_prune_flags(case, tiny_folder, tmp_path, capsys):
    flags, message = BAD[case]
    out = tmp_path / "out"
    code, stdout, err = run(capsys, *small(tiny_folder, out, *flags))
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_model_path(tmp_path, capsys):
    code, _, err = run(capsys, *small(tmp_path / "nope", tmp_path / "out"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "out").exists()


def test_recipe_with_unknown_key(tiny_folder, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - method: wanda\n    sparsty: 0.5\n")
    code, _, err = run(capsys, *small(tiny_folder, tmp_path / "out", "--recipe", recipe))
    assert code == 2 and "unknown key 'sparsty' in steps[0]" in err and "sparsity" in err
    assert not (tmp_path / "out").exists()


def test_calibration_text_shorter_than_one_window(tiny_folder, tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("Only a few words here.")
    code, _, err = run(capsys, *small(tiny_folder, tmp_path / "out", "--calibration", text))
    assert code == 2 and "shorter than one window of 32" in err
    assert not (tmp_path / "out").exists()


def test_out_equal_to_input_or_existing(tiny_folder, tmp_path, capsys):
    before = sorted(p.name for p in tiny_folder.iterdir())
    code, _, err = run(capsys, *small(tiny_folder, tiny_folder))
    assert code == 2 and "input model folder" in err
    assert sorted(p.name for p in tiny_folder.iterdir()) == before
    existing = tmp_path / "exists"
    existing.mkdir()
    code, _, err = run(capsys, *small(tiny_folder, existing))
    assert code == 2 and "already exists" in err and list(existing.iterdir()) == []


def test_prune_eval_inspect_round_trip(tiny_folder, tmp_path, capsys):
    out = tmp_path / "pruned"
    code, stdout, _ = run(capsys, *small(tiny_folder, out, "--method", "sparsegpt", "--pattern", "2:4", "--json",
                                         "--calibration", "brown:r"))
    assert code == 0
    result = json.loads(stdout)
    assert result["sparsity"] == pytest.approx(0.5) and result["out"] == str(out)
    manifest = json.loads((out / "prunekit.json").read_text())
    assert manifest["steps"][0]["method"] == "sparsegpt"
    assert manifest["calibration"]["source"] == "brown:r" and manifest["result"]["calibration"].startswith("brown:r")
    assert len(manifest["result"]["layers"]) == 14
    code, stdout, _ = run(capsys, "inspect", "--model", out, "--json")
    report = json.loads(stdout)
    assert code == 0 and all(layer["nm"]["2:4"] for layer in report["layers"])
    code, stdout, _ = run(capsys, "eval", "--model", out, "--text", "brown:r", "--nwindows", "2", "--seqlen", "64",
                          "--json")
    metrics = json.loads(stdout)
    assert code == 0 and metrics["tokens"] == 128 and set(metrics) == {
        "model", "text", "seqlen", "perplexity", "tokens", "seconds", "windows", "scored_tokens", "stride",
        "nll", "bytes", "words", "bits_per_byte", "byte_perplexity", "word_perplexity"}
    # a second run to the same --out is refused; --overwrite replaces it atomically
    assert run(capsys, *small(tiny_folder, out))[0] == 2
    code, _, _ = run(capsys, *small(tiny_folder, out, "--overwrite", "--method", "magnitude"))
    assert code == 0
    assert json.loads((out / "prunekit.json").read_text())["steps"][0]["method"] == "magnitude"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pruned")]  # no temp folders left


def test_prunekit_json_of_an_output_is_a_recipe_that_repeats_the_run(tiny_folder, tmp_path, capsys):
    """`prunekit prune --recipe OUT/prunekit.json` on the same input gives the same masks (and weights)."""
    from safetensors.torch import load_file

    first, second = tmp_path / "first", tmp_path / "second"
    assert run(capsys, *small(tiny_folder, first, "--method", "sparsegpt", "--sparsity", "0.6", "--allocation",
                              "global", "--calibration", "brown:r", "--option", "blocksize=16"))[0] == 0
    code, _, err = run(capsys, "prune", "--model", tiny_folder, "--out", second, "--quiet",
                       "--recipe", first / "prunekit.json")
    assert code == 0, err
    a, b = ({k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()} for d in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((second / "prunekit.json").read_text())["steps"] == json.loads(
        (first / "prunekit.json").read_text())["steps"]


def test_list_reads_every_registry_and_the_readme_names_every_method(capsys):
    from pathlib import Path

    from prunekit.core import registry

    code, stdout, _ = run(capsys, "list", "--json")
    listing = json.loads(stdout)
    assert code == 0 and set(listing) == {"methods", "criteria", "allocations", "schedules", "scores", "selectors",
                                          "steps", "delta-methods", "tasks"}
    for kind, entries in listing.items():
        names = [e["name"] for e in entries]
        assert names and all(e["description"] for e in entries), kind
    assert [e["name"] for e in listing["methods"]] == registry.METHODS.names()
    sparsegpt = next(e for e in listing["methods"] if e["name"] == "sparsegpt")
    assert {o["name"]: o["default"] for o in sparsegpt["options"]} == {"percdamp": 0.01, "blocksize": 128}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert all(f"| `{name}` |" in readme for name in registry.METHODS.names())


def test_python_dash_m_prunekit_runs_the_cli(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import prunekit

    env = {**os.environ, "PYTHONPATH": str(Path(prunekit.__file__).parents[1])}
    ok = subprocess.run([sys.executable, "-m", "prunekit", "list", "tasks"], capture_output=True, text=True, env=env,
                        cwd=tmp_path)
    assert ok.returncode == 0 and "wordnet-gloss" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "prunekit", "eval", "--model", str(tmp_path / "absent")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("setup,expected", [("", "1"), ("import torch; ", "unset"),
                                            ("import os; os.environ['PRUNEKIT_KEEP_MALLOC'] = '1'; ", "unset")])
def test_the_command_asks_torch_for_huge_pages_before_torch_is_imported(setup, expected):
    """prepare_process sets THP_MEM_ALLOC_ENABLE only while torch can still read it (and not when opted out)."""
    import subprocess
    import sys

    code = (f"{setup}from prunekit.cli import prepare_process; prepare_process(); import os; "
            "print(os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset'))")
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "PRUNEKIT_KEEP_MALLOC")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == expected
