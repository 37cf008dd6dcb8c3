"""Bad inputs to ``prunekit data ...`` and ``prunekit train``: one line on stderr, exit code 2, nothing written.

One table per kind of check (issue 8). Each row is a bad input; the test runs ``prunekit.cli.main``
in-process on tiny in-memory datasets (the vision loader is replaced) and checks the exit code, that
stderr is one line naming the bad value, and that nothing was written or changed on disk.
"""

from __future__ import annotations

import errno
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import prunekit.data.cli as data_cli
from prunekit.cli import main
from prunekit.core.data_sources import TensorImageDataset

torch.set_num_threads(1)
N_TRAIN = 64


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture()
def loads(monkeypatch):
    """Tiny stand-ins for Fashion-MNIST and MNIST (different images); records every load."""
    calls = []

    def fake(name, split="train"):
        calls.append((name, split))
        g = torch.Generator().manual_seed({"fashion-mnist": 0, "mnist": 1}[name] + (10 if split == "test" else 0))
        n = N_TRAIN if split == "train" else 32
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        return TensorImageDataset(images, torch.arange(n) % 10)

    monkeypatch.setattr(data_cli, "_load_vision", fake)
    return calls


@pytest.fixture()
def selection(tmp_path):
    """A valid selection of 32 of the 64 tiny training examples."""
    path = tmp_path / "sel" / "keep.npz"
    path.parent.mkdir()
    idx = np.arange(0, N_TRAIN, 2)
    mask = np.zeros(N_TRAIN, bool)
    mask[idx] = True
    np.savez(path, indices=idx, mask=mask, n_total=np.int64(N_TRAIN))
    return path


@pytest.fixture()
def scores(tmp_path, loads):
    """A finished score folder (random scores: no training)."""
    out = tmp_path / "scores"
    assert main(["data", "score", "--scores", "random", "--seeds", "0,1", "--out", str(out), "--no-progress"]) == 0
    return out


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def one_line_error(capsys, code, named):
    out, err = capsys.readouterr()
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.count("\n") == 1, err
    assert "error:" in err and "Traceback" not in err
    for text in named if isinstance(named, tuple) else (named,):
        assert text in err, err
    return err


def train_argv(selection, out, *extra):
    return ["data", "train", "--selection", str(selection), "--budget", "equal-epochs", "--epochs", "1",
            "--no-progress", "--out", str(out), *extra]


# ---------------------------------------------------------------------------------- 1. nonsense numbers
NUMBERS = [
    (["select", "--keep", "1.5"], "'1.5' is neither a fraction in (0, 1] nor a whole count"),
    (["select", "--keep", "0"], ("--keep must be", "got 0")),
    (["select", "--keep", "nan"], ("--keep must be", "got 'nan'")),
    (["select", "--keep", "inf"], ("--keep must be", "got 'inf'")),
    (["select", "--keep", "1e-9"], "rounds to 0"),
    (["select", "--keep", "0.5", "--seed", "-1"], ("--seed must be", "got -1")),
    (["select", "--method", "ccs", "--keep", "0.5", "--bins", "0"], ("--bins must be", "got 0")),
    (["select", "--method", "ccs", "--keep", "0.5", "--bins", "2.5"], ("--bins must be", "got 2.5")),
    (["select", "--method", "ccs", "--keep", "0.5", "--beta", "1"], ("--beta must be", "got 1.0")),
    (["select", "--method", "band", "--keep", "0.5", "--offset", "1"], ("--offset must be", "got 1.0")),
    (["select", "--method", "hardest", "--keep", "0.5", "--beta", "0.2"], "--beta '0.2' applies only to selector ccs, not 'hardest'"),
    (["select", "--method", "ccs", "--keep", "0.5", "--offset", "0.1"], "--offset '0.1' applies only"),
    (["score", "--epochs", "-2"], ("--epochs must be", "got -2")),
    (["score", "--epochs", "0"], ("--epochs must be", "got 0")),
    (["score", "--seeds", "0,-1"], ("--seeds entry must be", "got -1")),
    (["score", "--seeds", "1,1"], "--seeds '1,1' repeats"),
    (["score", "--seeds", ","], "--seeds ',' is empty"),
    (["score", "--seeds", "0;1"], ("--seeds entry must be", "got '0;1'")),
    (["score", "--score-epochs", "0"], ("--score-epochs entry must be", "got 0")),
    (["score", "--limit", "0"], ("--limit must be", "got 0")),
    (["train", "--epochs", "-1"], ("--epochs must be", "got -1.0")),
    (["train", "--epochs", "nan"], ("--epochs must be", "got 'nan'")),
    (["train", "--seed", "-3"], ("--seed must be", "got -3")),
    (["train", "--kd", "--alpha", "1.5"], ("--alpha must be", "got 1.5")),
    (["train", "--kd", "--temperature", "0"], ("--temperature must be", "got 0.0")),
    (["train", "--temperature", "2"], "--temperature '2' applies only with --kd"),
]


@pytest.mark.parametrize(("argv", "named"), NUMBERS, ids=[" ".join(a) for a, _ in NUMBERS])
def test_nonsense_numbers_are_refused(tmp_path, capsys, loads, scores, selection, argv, named):
    cmd, rest = argv[0], argv[1:]
    before = snapshot(tmp_path)
    if cmd == "select":
        out = tmp_path / "new" / "keep.npz"
        code = main(["data", "select", "--scores", str(scores), *rest, "--out", str(out)])
    elif cmd == "score":
        out = tmp_path / "new"
        code = main(["data", "score", "--scores", "el2n", *rest, "--out", str(out)])
    else:
        out = tmp_path / "new"
        base = train_argv(selection, out)
        if "--epochs" in rest:
            base = base[:base.index("--epochs")] + base[base.index("--epochs") + 2:]
        code = main([*base, *rest])
    one_line_error(capsys, code, named)
    assert snapshot(tmp_path) == before  # nothing written


# ---------------------------------------------------------------------------------- 2. selection files
def _write_npz(path, **arrays):
    np.savez(path, **arrays)


SELECTIONS = [
    ("float indices", lambda p: _write_npz(p, indices=np.array([0.0, 2.7]), n_total=np.int64(N_TRAIN)), "float64"),
    ("index out of range", lambda p: _write_npz(p, indices=np.array([0, N_TRAIN]), n_total=np.int64(N_TRAIN)),
     f"index {N_TRAIN} is out of range [0, {N_TRAIN})"),
    ("negative index", lambda p: _write_npz(p, indices=np.array([-1, 3]), n_total=np.int64(N_TRAIN)),
     "index -1 is out of range"),
    ("repeated index", lambda p: _write_npz(p, indices=np.array([3, 3, 5]), n_total=np.int64(N_TRAIN)),
     "index 3 appears more than once"),
    ("empty", lambda p: _write_npz(p, indices=np.array([], np.int64), n_total=np.int64(N_TRAIN)), "keeps no examples"),
    ("no n_total", lambda p: _write_npz(p, indices=np.array([1, 2])), "no 'indices' and 'n_total'"),
    ("float n_total", lambda p: _write_npz(p, indices=np.array([1, 2]), n_total=np.float64(64.5)), "n_total"),
    ("mask disagrees", lambda p: _write_npz(p, indices=np.array([1, 2]), mask=np.ones(N_TRAIN, bool),
                                            n_total=np.int64(N_TRAIN)), "mask does not match"),
    ("object array", lambda p: _write_npz(p, indices=np.array([1, "x"], dtype=object), n_total=np.int64(N_TRAIN)),
     "not a prunekit selection file"),
    ("garbage bytes", lambda p: p.write_bytes(b"\x00garbage" * 10), "not a prunekit selection file"),
    ("a pickle", lambda p: p.write_bytes(pickle.dumps({"indices": [1, 2], "n_total": 64})),
     "not a prunekit selection file"),
    ("made on another dataset size", lambda p: _write_npz(p, indices=np.array([1, 2]), n_total=np.int64(100)),
     "made on 100 examples"),
]


@pytest.mark.parametrize(("write", "named"), [r[1:] for r in SELECTIONS], ids=[r[0] for r in SELECTIONS])
def test_bad_selection_files_are_refused(tmp_path, capsys, loads, write, named):
    sel = tmp_path / "bad.npz"
    write(sel)
    out = tmp_path / "train"
    code = main(train_argv(sel, out))
    err = one_line_error(capsys, code, named)
    assert "bad.npz" in err or "100" in err or "no examples" in err
    assert not out.exists()


# ---------------------------------------------------------------------------------- 3. outputs checked first
def _file(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("mine")
    return f


def _foreign_folder(tmp_path):
    d = tmp_path / "project"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    return d


def _bad_run_json(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "run.json").write_text("{not json")
    return d


OUTPUTS = [
    ("score", lambda t: _file(t), "exists and is not a folder"),
    ("score", lambda t: _file(t) / "sub", "is a file, not a folder"),
    ("score", lambda t: _foreign_folder(t), "is not empty and is not a prunekit 'data score' run folder"),
    ("score", lambda t: _bad_run_json(t), "unreadable run.json"),
    ("score", "readonly", "is not writable"),
    ("train", lambda t: _file(t) / "sub", "is a file, not a folder"),
    ("train", lambda t: _foreign_folder(t), "is not empty and is not a prunekit 'data train' run folder"),
    ("train", "scores", "is a prunekit 'data score' run folder, not a 'data train' one"),
    ("train", "readonly", "is not writable"),
    ("select", lambda t: _file(t) / "keep.npz", "is a file, not a folder"),
    ("select", lambda t: t / "keep.txt", "must end in .npz"),
    ("select", lambda t: _file(t).rename(t / "keep.npz"), "already exists; pass --overwrite"),
    ("select", lambda t: (t / "keep.json").write_text("mine") and t / "keep.npz", "keep.json' already exists"),
    ("select", "readonly", "is not writable"),
    ("report", lambda t: _file(t), "already exists; pass --overwrite"),
    ("report", lambda t: _file(t) / "r.md", "is a file, not a folder"),
]


@pytest.mark.parametrize(("cmd", "make", "named"), OUTPUTS, ids=[f"{c}-{m if isinstance(m, str) else i}-{n[:20]}"
                                                                  for i, (c, m, n) in enumerate(OUTPUTS)])
def test_unwritable_or_foreign_out_is_refused_before_the_work(tmp_path, capsys, monkeypatch, loads, scores,
                                                              selection, cmd, make, named):
    if make == "scores":
        out = scores
    elif make == "readonly":
        ro = tmp_path / "readonly"
        ro.mkdir()
        out = ro / ("keep.npz" if cmd == "select" else "out")
        read_only(monkeypatch, ro)
    else:
        out = make(tmp_path)
    loads.clear()
    before = snapshot(tmp_path)
    if cmd == "score":
        code = main(["data", "score", "--scores", "el2n", "--out", str(out), "--no-progress"])
    elif cmd == "train":
        code = main(train_argv(selection, out))
    elif cmd == "select":
        code = main(["data", "select", "--scores", str(scores), "--keep", "0.5", "--out", str(out)])
    else:
        code = main(["data", "report", "--scores", str(scores), "--out", str(out)])
    one_line_error(capsys, code, named)
    assert snapshot(tmp_path) == before  # nothing written, nothing replaced
    assert loads == []  # refused before any data was loaded


def read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` look read-only to prunekit's checks (the tests run as root, for whom chmod is no bar)."""
    import prunekit.core.io as io
    import prunekit.data.runs as runs

    real_access, real_mkdtemp = runs.os.access, io.tempfile.mkdtemp
    monkeypatch.setattr(runs.os, "access", lambda p, mode, **kw: False if Path(p) == folder else
                        real_access(p, mode, **kw))

    def mkdtemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == folder:
            raise PermissionError(13, "Permission denied")
        return real_mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(io.tempfile, "mkdtemp", mkdtemp)


@pytest.mark.parametrize(("make", "named"), [
    (lambda t: _file(t) / "model.safetensors", "is a file, not a folder"),
    (lambda t: (t / "dir.safetensors").mkdir() or t / "dir.safetensors", "already exists"),
    (lambda t: str(t / "new") + "/", "must be a file path"),
    (lambda t: t / "model.pt", "must end in .safetensors"),
    ("readonly", "is not writable"),
], ids=["parent-is-a-file", "existing-folder", "trailing-slash", "pickle-suffix", "readonly"])
def test_train_output_is_checked_before_training(tmp_path, capsys, monkeypatch, make, named):
    from prunekit.training import cli as train_cli

    if make == "readonly":
        out = tmp_path / "model.safetensors"
        read_only(monkeypatch, tmp_path)
    else:
        out = make(tmp_path)
    monkeypatch.setattr(train_cli, "train_and_prune", lambda c: pytest.fail("training started"))
    before = snapshot(tmp_path)
    code = main(["train", "--epochs", "0.01", "--limit", "128", "--quiet", "--output", str(out)])
    one_line_error(capsys, code, (named, "--out "))
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------- 4. no code from a run folder
class Payload:
    """Unpickling this creates ``marker``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_torch(path: Path, marker: Path) -> None:
    torch.save({"model": Payload(marker), "epoch": 0}, path)


def _plant_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(marker)))


CHECKPOINTS = [
    # (command, first-run extra args, planted file, files deleted to force reading it, writer)
    ("score", ["--scores", "el2n"], "work/seed0.ckpt", ["work/seed0_final.npz", "scores.*"], _plant_torch),
    ("score", ["--scores", "el2n"], "work/seed0.ckpt", ["work/seed0_final.npz", "scores.*"], _plant_pickle),
    ("score", ["--scores", "vog"], "work/seed0_epoch1.[ps]*", ["work/seed0_final.npz", "scores.*"], _plant_torch),
    ("train", [], "student.ckpt", [], _plant_torch),
    ("train", ["--kd"], "teacher.ckpt", ["teacher_seed0_logits*"], _plant_torch),
    ("train", ["--kd"], "teacher_seed0_logits*", [], _plant_pickle),
]


@pytest.mark.parametrize(("cmd", "extra", "planted", "delete", "plant"), CHECKPOINTS,
                         ids=[f"{c}-{p}-{w.__name__}" for c, _, p, _, w in CHECKPOINTS])
def test_a_crafted_checkpoint_in_the_run_folder_is_never_executed(tmp_path, capsys, loads, selection, cmd, extra,
                                                                  planted, delete, plant):
    out = tmp_path / "run"
    if cmd == "score":
        argv = ["data", "score", *extra, "--epochs", "1", "--no-progress", "--out", str(out)]
    else:
        argv = [*train_argv(selection, out), *extra]
    assert main(argv) == 0
    capsys.readouterr()
    targets = sorted(out.glob(planted))
    assert targets, f"the first run wrote no {planted}"
    for pattern in delete:
        for p in out.glob(pattern):
            p.unlink()
    marker = tmp_path / "PWNED"
    for target in targets:
        plant(target, marker)
    code = main(argv)
    assert not marker.exists(), "a checkpoint in the run folder executed code"
    one_line_error(capsys, code, ("is not a prunekit checkpoint", "delete it"))


def test_no_unpickling_anywhere_in_src():
    """The grep-level guarantee of issue 8 for the data and training packages."""
    root = Path(__file__).resolve().parents[1] / "src" / "prunekit"
    for folder in ("data", "training"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            assert "np.load(" not in text.replace("np.load(path, allow_pickle=False)", ""), path
            text = text.replace("allow_pickle=False", "")  # the one allowed mention: np.load refusing pickles
            for bad in ("weights_only=False", "pickle", "torch.load(", "yaml.load("):
                assert bad not in text.lower(), f"{path}: {bad}"


# ---------------------------------------------------------------------------------- 5. resume mixes runs
RESUMES = [
    (["--dataset", "fashion-mnist"], ["--dataset", "mnist"], ("dataset='fashion-mnist'", "dataset='mnist'")),
    (["--seeds", "0"], ["--seeds", "0,1"], ("seeds=[0]", "seeds=[0, 1]")),
    (["--scores", "random"], ["--scores", "random,el2n"], ("scores=['random']", "scores=['el2n', 'random']")),
    ([], ["--limit", "32"], ("limit=None", "limit=32")),
    ([], ["--format", "npz"], ("format='parquet'", "format='npz'")),
]


@pytest.mark.parametrize(("first", "second", "named"), RESUMES, ids=[" ".join(b) for _, b, _ in RESUMES])
def test_resuming_a_score_run_with_another_configuration_is_refused(tmp_path, capsys, loads, first, second, named):
    out = tmp_path / "run"
    base = {"--scores": "random", "--dataset": "fashion-mnist"}
    argv = lambda extra: ["data", "score", *[a for k, v in base.items() if k not in extra for a in (k, v)],  # noqa: E731
                          *extra, "--no-progress", "--out", str(out)]
    assert main(argv(first)) == 0
    capsys.readouterr()
    before = snapshot(out)
    one_line_error(capsys, main(argv(second)), named)
    assert snapshot(out) == before
    assert main(argv(first)) == 0  # the same configuration still resumes


TRAIN_RESUMES = [
    (["--budget", "equal-iterations"], ("budget='equal-epochs'", "budget='equal-iterations'")),
    (["--seed", "1"], ("seed=0", "seed=1")),
    (["--epochs", "2"], ("epochs=1.0", "epochs=2.0")),
    (["--dataset", "mnist"], ("dataset='fashion-mnist'", "dataset='mnist'")),
    (["--kd"], ("kd=False", "kd=True")),
    ("other-selection", ("selection='32 of 64",)),
]


@pytest.mark.parametrize(("second", "named"), TRAIN_RESUMES, ids=[str(s) for s, _ in TRAIN_RESUMES])
def test_resuming_a_train_run_with_another_configuration_is_refused(tmp_path, capsys, loads, selection, second,
                                                                    named):
    out = tmp_path / "run"
    assert main(train_argv(selection, out)) == 0
    capsys.readouterr()
    before = snapshot(out)
    if second == "other-selection":
        other = tmp_path / "other.npz"
        np.savez(other, indices=np.arange(1, N_TRAIN, 2), n_total=np.int64(N_TRAIN))
        argv = train_argv(other, out)
    else:
        argv = train_argv(selection, out)
        for flag in second[::2]:
            if flag in argv:
                i = argv.index(flag)
                del argv[i : i + 2]
        argv += second
    one_line_error(capsys, main(argv), named)
    assert snapshot(out) == before


# ---------------------------------------------------------------------------------- 6. files that are not ours
RECIPES = [
    ("tag.yaml", "!!python/object/apply:os.system ['touch PWNED']\n", "is not valid YAML"),
    ("broken.yaml", "steps: [\n", "is not valid YAML"),
    ("broken.json", "{", "is not valid JSON"),
    ("keep.yaml", "steps: [{method: ccs, keep: abc}]\n", ("keep", "steps[0]", "got 'abc'")),
    ("keep15.yaml", "steps: [{method: hardest, keep: 1.5}]\n", "keep 1.5 is neither a fraction"),
    ("bins.yaml", "steps: [{method: ccs, keep: 0.5, bins: 2.5}]\n", ("bins", "selector 'ccs'", "got 2.5")),
    ("nested.yaml", "steps: [{selector: ccs, sparsity: 0.5, options: {bins: 0}}]\n", ("bins", "selector 'ccs'", "got 0")),
    ("sparsity.yaml", "steps: [{selector: ccs, sparsity: 1.5}]\n", ("sparsity", "steps[0]", "got 1.5")),
    ("kind.yaml", "steps: [{kind: selectoin, sparsity: 0.5}]\n", "did you mean 'selection'?"),
    ("flat.yaml", "steps: [{method: hardest, keep: 0.5, beta: 0.1}]\n", ("unknown key 'beta'", "steps[0]")),
    ("beta.yaml", "steps: [{method: ccs, keep: 0.5, beta: abc}]\n", ("beta", "selector 'ccs'", "got 'abc'")),
    ("steps.yaml", "steps: 3\n", "recipe steps must be a list"),
    ("step.yaml", "steps: [hardest]\n", "steps[0] must be a mapping"),
    ("key.yaml", "steps: [{keep: 0.5}]\nscores: el2n\n", "unknown key 'scores'"),
    ("cb.yaml", "steps: [{keep: 0.5, class_balanced: 'yes'}]\n", ("class_balanced", "steps[0]", "got 'yes'")),
]


@pytest.mark.parametrize(("name", "text", "named"), RECIPES, ids=[r[0] for r in RECIPES])
def test_bad_recipe_files_are_refused(tmp_path, capsys, scores, monkeypatch, name, text, named):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / name
    recipe.write_text(text)
    out = tmp_path / "sel" / "keep.npz"
    code = main(["data", "select", "--scores", str(scores), "--recipe", str(recipe), "--out", str(out)])
    one_line_error(capsys, code, named)
    assert not out.parent.exists() and not (tmp_path / "PWNED").exists()


TABLES = [
    ("manifest garbage", lambda d: (d / "manifest.json").write_text("[1, 2"), "not a readable prunekit score table"),
    ("manifest names another file", lambda d: (d / "manifest.json").write_text(json.dumps(
        {**json.loads((d / "manifest.json").read_text()), "file": "../../etc/passwd"})), "'../../etc/passwd'"),
    ("scores file missing", lambda d: (d / "scores.parquet").unlink(), "not a readable prunekit score table"),
    ("scores file garbage", lambda d: (d / "scores.parquet").write_bytes(b"PAR1garbage"), "not a readable"),
]


@pytest.mark.parametrize(("break_it", "named"), [r[1:] for r in TABLES], ids=[r[0] for r in TABLES])
@pytest.mark.parametrize("cmd", ["select", "report"])
def test_tampered_score_tables_are_refused(tmp_path, capsys, scores, break_it, named, cmd):
    break_it(scores)
    out = tmp_path / "keep.npz"
    extra = ["--keep", "0.5", "--out", str(out)] if cmd == "select" else []
    code = main(["data", cmd, "--scores", str(scores), *extra])
    one_line_error(capsys, code, named)
    assert not out.exists()


# ---------------------------------------------------------------------------------- 7. interrupted or full disk
def test_ctrl_c_is_one_line_exit_130(tmp_path, capsys, monkeypatch, loads, selection):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("prunekit.data.train.fit", interrupt)
    code = main(train_argv(selection, tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 130 and err.count("\n") == 1 and "interrupted" in err and "resume" in err


def test_disk_full_while_saving_is_one_line(tmp_path, capsys, monkeypatch, loads):
    from prunekit.data.table import ScoreTable

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "scores.parquet"))

    monkeypatch.setattr(ScoreTable, "save", full)
    code = main(["data", "score", "--scores", "random", "--out", str(tmp_path / "run")])
    one_line_error(capsys, code, ("No space left on device", "scores.parquet"))
