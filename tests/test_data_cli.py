"""CLI: bad values exit 2 with one line naming the value and the choices, and write nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prunekit.data.cli import main
from prunekit.data.ids import example_ids
from prunekit.data.select import class_quotas, select
from prunekit.data.table import ScoreTable


@pytest.fixture()
def score_dir(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (200, 3, 3), generator=g, dtype=torch.uint8)
    labels = np.repeat([0, 1], [150, 50])
    t = ScoreTable(manifest={"dataset": "toy"})
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        t.add("el2n", rng.random(200), example_ids(x), labels=labels.tolist(), seed=seed, checkpoint=1)
    t.save(tmp_path / "scores")
    return tmp_path / "scores"


BAD = [
    (["score", "--dataset", "cifar"], "unknown dataset 'cifar' (choices: brown, fashion-mnist, mnist)"),
    (["score", "--scores", "el2n,bogus"], "unknown data score 'bogus' (choices: aum, el2n,"),
    (["score", "--scores", "el2m"], "unknown data score 'el2m'; did you mean 'el2n'?"),
    (["score", "--format", "csv"], "unknown format 'csv' (choices: npz, parquet)"),
    (["score", "--score-epochs", "9", "--epochs", "3"], ("--score-epochs entry must be", "got 9")),
    (["score", "--seeds", "a,b"], ("--seeds entry must be", "got 'a'")),
    (["score", "--dataset", "brown", "--scores", "el2n"],
     "data score 'el2n' does not apply to text documents; choices: lm_loss, perplexity"),
]


@pytest.mark.parametrize(("argv", "message"), BAD)
def test_score_bad_values_exit_2_one_line_nothing_written(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["data", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(m in err for m in (message if isinstance(message, tuple) else (message,)))
    assert not out.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "hardestt", "--keep", "0.5"],
     "unknown selector 'hardestt'; did you mean 'hardest'? (choices: band, ccs, easiest, hardest, random)"),
    (["--method", "ccs", "--keep", "-3"], ("--keep must be", "got -3")),
    (["--method", "ccs", "--keep", "5000"], "neither a fraction"),
    (["--method", "ccs", "--keep", "0.5", "--beta", "2"], ("--beta must be", "got 2.0")),
    (["--selector", "ccs", "--sparsity", "1"], ("--sparsity must be", "got 1.0")),
    (["--selector", "ccs", "--sparsity", "0.5", "--keep", "0.5"], "give --sparsity or its alias --keep, not both"),
    (["--keep", "0.5", "--score", "aum"], "unknown score column 'aum' (choices: el2n)"),
    (["--keep", "0.5", "--aggregate", "avg"], "unknown aggregate 'avg' (choices: max, mean, median, min)"),
])
def test_select_bad_values(score_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "sel" / "keep.npz"
    assert main(["data", "select", "--scores", str(score_dir), *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(m in err for m in (message if isinstance(message, tuple) else (message,)))
    assert not out.parent.exists()


def test_select_missing_scores_and_bad_budget(tmp_path, capsys):
    assert main(["data", "select", "--scores", str(tmp_path / "nope"), "--keep", "0.5", "--out",
                 str(tmp_path / "k.npz")]) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    sel = tmp_path / "k.npz"
    np.savez(sel, indices=np.arange(3), mask=np.ones(3, bool), n_total=np.int64(3))
    out = tmp_path / "train"
    assert main(["data", "train", "--selection", str(sel), "--budget", "same-time", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown budget 'same-time' (choices: equal-epochs, equal-iterations)" in err and err.count("\n") == 1
    assert not out.exists()


def test_argparse_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "select", "--keep", "0.5"])  # missing --scores and --out
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_select_with_recipe_and_class_quotas(score_dir, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "score: el2n\n"
        "steps:\n"
        "  - {method: easiest, keep: 0.9}\n"
        "  - {method: ccs, keep: 0.4, bins: 5, class_balanced: true}\n"
    )
    out = tmp_path / "keep.npz"
    assert main(["data", "select", "--scores", str(score_dir), "--recipe", str(recipe), "--out", str(out)]) == 0
    with np.load(out) as f:
        idx, mask = f["indices"], f["mask"]
    assert len(idx) == 80 and mask.sum() == 80
    table = ScoreTable.load(score_dir)
    labels = table.labels()
    pool = select(table.vector("el2n"), 0.9, "easiest", seed=0)  # step 1 of the recipe
    quotas = class_quotas(labels[pool], 80)  # exact, proportional to the pool that step 2 sees
    assert {c: int((labels[idx] == c).sum()) for c in (0, 1)} == quotas
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["kept"] == 80 and summary["score"] == "el2n"
    assert main(["data", "report", "--scores", str(score_dir)]) == 0
    assert "Spearman" in capsys.readouterr().out


def _indices(path):
    with np.load(path) as f:
        return f["indices"]


@pytest.mark.parametrize(("new", "old"), [
    (["--selector", "ccs", "--sparsity", "0.7"], ["--method", "ccs", "--keep", "0.3"]),
    (["--selector", "band", "--sparsity", "0.5", "--offset", "0.1"], ["--method", "band", "--keep", "0.5", "--offset", "0.1"]),
    (["--sparsity", "0.2", "--class-balanced"], ["--keep", "0.8", "--class-balanced"]),
])
def test_select_new_flag_names_and_their_aliases_keep_the_same_examples(score_dir, tmp_path, new, old):
    assert main(["data", "select", "--scores", str(score_dir), *new, "--out", str(tmp_path / "new.npz")]) == 0
    assert main(["data", "select", "--scores", str(score_dir), *old, "--out", str(tmp_path / "old.npz")]) == 0
    np.testing.assert_array_equal(_indices(tmp_path / "new.npz"), _indices(tmp_path / "old.npz"))


@pytest.mark.parametrize("text", [
    "score: el2n\nsteps:\n  - {selector: easiest, sparsity: 0.1}\n"
    "  - {selector: ccs, sparsity: 0.6, options: {bins: 5}, class_balanced: true}\n",
    "calibration: {nsamples: 8}\nsteps:\n  - {kind: selection, selector: easiest, sparsity: 0.1}\n"
    "  - {kind: selection, method: ccs, keep: 0.4, bins: 5, class_balanced: true}\n",
    "steps:\n- {method: easiest, keep: 0.9}\n- {method: ccs, keep: 0.4, options: {bins: 5}, class_balanced: true}\n",
])
def test_select_recipe_formats_agree(score_dir, tmp_path, text):
    """The new keys, a full recipe of selection steps and legacy steps select the same examples."""
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text("steps:\n  - {method: easiest, keep: 0.9}\n  - {method: ccs, keep: 0.4, bins: 5, class_balanced: true}\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    for path, out in ((legacy, "a.npz"), (recipe, "b.npz")):
        assert main(["data", "select", "--scores", str(score_dir), "--recipe", str(path), "--out", str(tmp_path / out)]) == 0
    np.testing.assert_array_equal(_indices(tmp_path / "a.npz"), _indices(tmp_path / "b.npz"))
    steps = json.loads((tmp_path / "b.json").read_text())["steps"]
    assert [s["selector"] for s in steps] == ["easiest", "ccs"] and steps[1]["options"]["bins"] == 5


def test_help_lists_come_from_the_registries(capsys):
    from prunekit.core.registry import SCORES, SELECTORS

    for argv, registry in ((["data", "score", "--help"], SCORES), (["data", "select", "--help"], SELECTORS)):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert all(name in out for name in registry.names())
    with pytest.raises(SystemExit):
        main(["data", "select", "--help"])
    assert "--bins" in capsys.readouterr().out  # a selector option is a flag
