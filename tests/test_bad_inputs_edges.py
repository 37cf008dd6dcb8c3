"""Edges (issue 18, classes 1, 9, 12, 13): the rules hold at the rename, odd inputs are one line, a
full disk leaves nothing half-written, and a bug says it is one.

The table (as in :mod:`tests.test_bad_inputs`): each row builds an argv from the tiny random Llama,
runs ``prunekit.cli.main`` in-process and expects exit code 2, one line holding the fragment, and
nothing created, changed or removed under ``tmp_path``. The tests after it need more than an exit
code: a folder made at ``--out`` while a prune runs survives it, a rerun after a full disk works,
and a bug exits 1 (with its traceback under ``--debug``).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from prunekit.cli import main
from tests.test_bad_inputs import Ctx, check_row, tiny_source  # noqa: F401

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _config_model(c: Ctx, **changes) -> Path:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(c.model)
    for key, value in changes.items():
        setattr(config, key, value)
    return c.broken_model(config__json=config.to_json_string())


def _int8_weight(c: Ctx, *extra):
    tensors = load_file(str(c.model / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    tensors[name] = (tensors[name] * 100).to(torch.int8)
    folder = c.broken_model(model__safetensors=None)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return c.prune(*extra, model=folder)


def _tampered_speed(c: Ctx):
    folder = c.manifest_model(json.dumps({"prunekit_version": "0.1.0", "speed": {"dense": "garbage"}}))
    return ["report", str(folder), "--out", str(c.tmp / "page"), "--quiet", "--tasks", "none", "--nwindows", "1"]


def _loop(c: Ctx):
    (c.tmp / "loop").symlink_to(c.tmp / "loop")
    return c.prune(out=c.tmp / "loop" / "out")


def _disk_full_sparse_delta(c: Ctx):
    """``delta --format sparse`` whose safetensors write fails half-way."""
    def full(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise ENOSPC

    c.monkeypatch.setattr("safetensors.torch.save_file", full)
    finetuned = c.tmp / "ft"
    shutil.copytree(c.model, finetuned, copy_function=os.link)
    tensors = load_file(str(c.model / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.weight"][0, :5] += 1.0
    (finetuned / "model.safetensors").unlink()
    save_file(tensors, str(finetuned / "model.safetensors"), metadata={"format": "pt"})
    return ["delta", "--base", str(c.model), "--finetuned", str(finetuned), "--format", "sparse", "--out",
            str(c.tmp / "d.safetensors"), "--quiet"]


def _disk_full_train_output(c: Ctx):
    def full(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise ENOSPC

    c.monkeypatch.setattr("safetensors.torch.save_file", full)
    return ["train", "--quiet", "--epochs", "1", "--limit", "256", "--output", str(c.tmp / "model.safetensors")]


def _select_args(c: Ctx) -> list[str]:
    import numpy as np

    from prunekit.data.table import ScoreTable

    table = ScoreTable()
    table.add("el2n", np.arange(8.0), [f"{i:016x}" for i in range(8)], seed=0)
    table.save(c.tmp / "scores", fmt="npz")
    return ["data", "select", "--scores", str(c.tmp / "scores"), "--score", "el2n", "--keep", "0.5"]


def _disk_full_select(c: Ctx):
    """``data select`` whose JSON companion fails after the .npz was written (class 12)."""
    argv = _select_args(c)
    from prunekit.core import io

    def full(path, data, *args, **kwargs):
        Path(path).write_text("")
        raise ENOSPC

    c.monkeypatch.setattr(io, "write_json", full)
    return [*argv, "--out", str(c.tmp / "k.npz")]


def _disk_full_data_report(c: Ctx):
    argv = _select_args(c)

    def full(path, text):
        Path(path).write_text("")
        raise ENOSPC

    c.monkeypatch.setattr("prunekit.core.io.write_text", full)
    return ["data", "report", "--scores", argv[3], "--out", str(c.tmp / "r.md")]


# id: (setup, fragment of the one line)
ROWS = {
    # class 9: one line instead of a traceback, checked before work
    "int8 weight, streamed": (lambda c: _int8_weight(c), "has dtype I8; prunekit prunes floating-point checkpoints"),
    "int8 weight, in memory": (lambda c: _int8_weight(c, "--no-stream"), "has dtype I8"),
    "tokenizer larger than the embedding": (lambda c: c.prune(model=_config_model(c, vocab_size=1000)),
                                            "has 49,152 tokens but its embedding table has 1,000 rows"),
    "zero layers (streamed)": (lambda c: c.prune(model=_config_model(c, num_hidden_layers=0)),
                               "has 0 decoder layers"),
    "zero layers (in memory)": (lambda c: c.prune("--no-stream", model=_config_model(c, num_hidden_layers=0)),
                                "has 0 decoder layers"),
    "tampered speed receipt": (_tampered_speed, "speed.dense.parameters must be a number"),
    "path component too long": (lambda c: c.prune(out=c.tmp / ("a" * 300)), "File name too long"),
    "symbolic link loop in --out": (_loop, "is a loop of symbolic links"),
    "argparse error is one line": (lambda c: ["prune", "--model"], "expected one argument"),
    "disk full: delta --format sparse": (_disk_full_sparse_delta, "the disk is full; nothing was written"),
    "disk full: train --output": (_disk_full_train_output, "the disk is full; nothing was written"),
    # class 12: nothing half-written on a full disk
    "disk full: data select": (_disk_full_select, "the disk is full; nothing was written"),
    "disk full: data report": (_disk_full_data_report, "the disk is full; nothing was written"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_edge_is_one_line_exit_2_and_writes_nothing(row, tiny_source, tmp_path, monkeypatch, capsys):  # noqa: F811
    setup, fragment = ROWS[row]
    model = tmp_path / "models" / "m"
    shutil.copytree(tiny_source, model, copy_function=os.link)
    argv = setup(Ctx(tmp_path, model, monkeypatch, model))
    check_row(argv, 2, fragment, False, tmp_path, monkeypatch, capsys, argparse_exit=True)


def test_a_legal_long_name_is_accepted(tiny_source, tmp_path):  # noqa: F811
    """240 bytes is a legal file name: the staging name beside it must not push it over the limit."""
    out = tmp_path / ("b" * 240)
    assert main(["prune", "--model", str(tiny_source), "--out", str(out), "--quiet", "--method", "magnitude",
                 "--calibration", "brown:r", "--nsamples", "2", "--seqlen", "16"]) == 0
    assert (out / "prunekit.json").is_file()


# ------------------------------------------------------------------ class 1: the rules at the rename

def _made_during_the_run(monkeypatch, out: Path, manifest: bool = False) -> None:
    """Someone creates ``out`` (with a file of theirs) while the prune is saving its last files."""
    import prunekit.oneshot.prune as oneshot

    real = oneshot._save_config

    def meanwhile(model, folder, tmp):
        out.mkdir()
        (out / "theirs.txt").write_text("made while prunekit ran\n")
        if manifest:
            (out / "prunekit.json").write_text(json.dumps({"prunekit_version": "0.1.0"}))
        real(model, folder, tmp)

    monkeypatch.setattr(oneshot, "_save_config", meanwhile)


@pytest.mark.parametrize("overwrite", [False, True], ids=["no --overwrite", "--overwrite"])
def test_a_folder_made_at_out_during_the_run_is_not_replaced(overwrite, tiny_source, tmp_path, monkeypatch,  # noqa: F811
                                                             capsys):
    out = tmp_path / "out"
    _made_during_the_run(monkeypatch, out, manifest=overwrite)
    argv = ["prune", "--model", str(tiny_source), "--out", str(out), "--quiet", "--method", "magnitude",
            "--calibration", "brown:r", "--nsamples", "2", "--seqlen", "16", *(["--overwrite"] if overwrite else [])]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert ("already exists" if not overwrite else "holds 'theirs.txt'") in err, err
    assert sorted(p.name for p in out.iterdir()) == (["prunekit.json", "theirs.txt"] if overwrite else ["theirs.txt"])
    assert (out / "theirs.txt").read_text() == "made while prunekit ran\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_the_rerun_after_a_full_disk_writes_the_selection(tiny_source, tmp_path, monkeypatch, capsys):  # noqa: F811
    """Class 12: a failed ``data select`` leaves nothing of its own, so the same command then succeeds."""
    c = Ctx(tmp_path, tiny_source, monkeypatch, tiny_source)
    argv = _disk_full_select(c)
    assert main(argv) == 2
    monkeypatch.undo()
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "k.npz").is_file() and json.loads((tmp_path / "k.json").read_text())


# ------------------------------------------------------------------ class 13: a bug is not bad input

def _bug(monkeypatch):
    from prunekit.oneshot.magnitude import Magnitude

    def broken(self, *args, **kwargs):
        raise ZeroDivisionError("a bug in a new method")

    monkeypatch.setattr(Magnitude, "scores", broken)


@pytest.mark.parametrize("how", ["plain", "--debug", "PRUNEKIT_DEBUG=1"])
def test_a_bug_exits_1_and_says_it_is_one(how, tiny_source, tmp_path, monkeypatch, capsys):  # noqa: F811
    _bug(monkeypatch)
    argv = ["prune", "--model", str(tiny_source), "--out", str(tmp_path / "out"), "--quiet", "--method", "magnitude",
            "--calibration", "brown:r", "--nsamples", "2", "--seqlen", "16"]
    if how == "--debug":
        argv.append("--debug")
    if how.startswith("PRUNEKIT_DEBUG"):
        monkeypatch.setenv("PRUNEKIT_DEBUG", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "a bug in prunekit" in err.splitlines()[-1]
    if how == "plain":
        assert len(err.splitlines()) == 1 and "ZeroDivisionError: a bug in a new method" in err and "--debug" in err
    else:
        assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err
    assert list(tmp_path.iterdir()) == []
