"""Bad inputs to ``prunekit prune|eval|inspect``: one line on stderr, exit code 2, nothing written (issue 8).

One table: each row builds an argv (and whatever files it needs) under ``tmp_path`` from a tiny
random Llama, runs ``prunekit.cli.main`` in-process and checks the exit code, that stderr is one
line holding the expected fragment, and that no file under ``tmp_path`` was created, changed or
removed. Rows marked ``early`` must fail before any weights load (loading is replaced by an
assertion). Ctrl-C rows expect exit code 130. The tests after the table cover what is not an exit
code: a killed save's leftovers are removed by the next save, and the README lists the rules.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from prunekit.cli import main

SEQLEN_LIMIT = 256  # max_position_embeddings of the tiny model


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory, smollm2_tokenizer):
    """A tiny random Llama (MLP width 120, 256 positions) with SmolLM2's tokenizer, saved once."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=60, intermediate_size=120, num_hidden_layers=2,
                      num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=SEQLEN_LIMIT)
    folder = tmp_path_factory.mktemp("tiny-source") / "model"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_sharded(tiny_source, tmp_path_factory):
    """The tiny model saved in shards of at most 1 MB (the embeddings alone in one) with an index."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-sharded") / "model"
    AutoModelForCausalLM.from_pretrained(tiny_source).save_pretrained(folder, max_shard_size="1MB")
    for file in tiny_source.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(file, folder / file.name)
    return folder


@dataclass
class Ctx:
    tmp: Path
    model: Path  # a private copy of the tiny model (hard links; files are replaced, never edited in place)
    monkeypatch: pytest.MonkeyPatch
    sharded: Path  # a private copy of the tiny model in several shards with an index
    out: Path = field(init=False)

    def __post_init__(self):
        self.out = self.tmp / "out"

    def write(self, relative: str, content: str | bytes) -> Path:
        path = self.tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()  # break the hard link before writing
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def prune(self, *extra, model=None, out=None, calibration=True) -> list[str]:
        argv = ["prune", "--model", str(model or self.model), "--out", str(out or self.out), "--quiet",
                "--calibration", "brown:r"]
        if calibration:
            argv += ["--nsamples", "2", "--seqlen", "16"]
        return argv + [str(a) for a in extra]

    def recipe(self, text: str, name: str = "recipe.yaml") -> list[str]:
        return self.prune("--recipe", self.write(name, text), calibration=False)

    def broken_model(self, source: Path | None = None, **files) -> Path:
        """A copy of the model (or of ``source``) with some files replaced (None deletes one)."""
        folder = self.tmp / "broken"
        shutil.copytree(source or self.model, folder, copy_function=os.link)
        for name, content in files.items():
            name = name.replace("__", ".")
            (folder / name).unlink(missing_ok=True)
            if content is not None:
                (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return folder

    def manifest_model(self, manifest: str) -> Path:
        return self.broken_model(**{"prunekit__json": manifest})


def _prune_output_parent(c: Ctx):
    shutil.copytree(c.model, c.tmp / "models" / "other", copy_function=os.link)
    return c.prune("--overwrite", out=c.model.parent)


def _inside_input(c: Ctx):
    return c.prune(out=c.model / "pruned")


def _cwd(c: Ctx):
    project = c.tmp / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('precious')\n")
    c.monkeypatch.chdir(project)
    return c.prune("--overwrite", out=".")


def _cwd_parent(c: Ctx):
    project = c.tmp / "project" / "sub"
    project.mkdir(parents=True)
    c.monkeypatch.chdir(project)
    return c.prune("--overwrite", out="..")


def _cache(c: Ctx, where: str, overwrite: bool):
    cache = c.tmp / "cache"
    (cache / "models" / "smollm2-135m").mkdir(parents=True)
    (cache / "models" / "smollm2-135m" / "config.json").write_text("{}")
    c.monkeypatch.setenv("PRUNEKIT_CACHE", str(cache))
    return c.prune(*(["--overwrite"] if overwrite else []), out=cache / where)


def _home(c: Ctx):
    home = c.tmp / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "todo.txt").write_text("keep me\n")
    c.monkeypatch.setenv("HOME", str(home))
    c.monkeypatch.setenv("PRUNEKIT_CACHE", str(c.tmp / "elsewhere-cache"))
    return c.prune("--overwrite", out=home)


def _foreign_folder(c: Ctx):
    c.write("out/notes.txt", "my notes\n")
    return c.prune("--overwrite")


def _foreign_file_in_output(c: Ctx):
    c.write("out/prunekit.json", json.dumps({"prunekit_version": "0.1.0"}))
    c.write("out/config.json", "{}")
    c.write("out/thesis.tex", "\\documentclass{article}\n")
    return c.prune("--overwrite")


def _not_writable(c: Ctx):
    try:  # /sys refuses new folders even for root; skip where it does not
        os.rmdir(tempfile.mkdtemp(dir="/sys"))
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    return c.prune(out="/sys/prunekit-out")


def _parent_is_file(c: Ctx):
    c.write("file.txt", "a file, not a folder\n")
    return c.prune(out=c.tmp / "file.txt" / "out")


def _save_fails(error: BaseException, stream: bool = True):
    """Saving fails after writing part of a file: a streamed prune while it writes an output shard,
    an in-memory one (--no-stream) in transformers' save_pretrained."""

    def setup(c: Ctx):
        from transformers import PreTrainedModel

        def full_disk(self, folder, *args, **kwargs):
            Path(folder, "model.safetensors").write_bytes(b"partial")
            raise error

        def full_disk_shard(tensors, filename, *args, **kwargs):
            Path(filename).write_bytes(b"partial")
            raise error

        if stream:
            c.monkeypatch.setattr("prunekit.core.shards.save_file", full_disk_shard)
            return c.prune()
        c.monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
        return c.prune("--no-stream")

    return setup


def _shard(c: Ctx, index: int = 1) -> str:
    """The name of the ``index``-th shard of the sharded copy."""
    return sorted(p.name for p in c.sharded.glob("model-*.safetensors"))[index]


def _missing_shard(c: Ctx):
    return c.prune(model=c.broken_model(c.sharded, **{_shard(c): None}))


def _truncated_shard(c: Ctx):
    data = (c.sharded / _shard(c)).read_bytes()
    return c.prune(model=c.broken_model(c.sharded, **{_shard(c): data[: len(data) - 100]}))


def _lacking_tensor(c: Ctx):
    from safetensors.torch import load_file, save_file

    tensors = load_file(c.model / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    folder = c.broken_model(model__safetensors=None)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return c.prune(model=folder)


def _load_interrupted(c: Ctx):
    from transformers import AutoModelForCausalLM

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    c.monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", interrupted)
    return ["eval", "--model", str(c.model), "--nwindows", "1", "--seqlen", "16", "--text", "brown:r"]


def _no_gpu(c: Ctx):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    return c.prune("--device", "cuda")


def _config_model(c: Ctx, config) -> Path:
    """A copy of the model whose config.json is ``config`` (a transformers config)."""
    return c.broken_model(config__json=config.to_json_string())


def _no_block_list(c: Ctx):
    from transformers import Olmo2Config  # not in the family table: found by discovery, here with zero blocks

    return c.prune(model=_config_model(c, Olmo2Config(vocab_size=64, hidden_size=16, num_hidden_layers=0,
                                                      num_attention_heads=2, intermediate_size=32, pad_token_id=0)))


def _structured_discovered(c: Ctx):
    from transformers import Phi3Config

    config = Phi3Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return c.prune("--structure", "mlp", "--sparsity", "0.2", model=_config_model(c, config))


def _eval(c: Ctx, *extra, model=None):
    return ["eval", "--model", str(model or c.model), "--text", "brown:r", "--quiet", "--nwindows", "1", "--seqlen", "16",
            *map(str, extra)]


def _truncated(c: Ctx):
    data = (c.model / "model.safetensors").read_bytes()
    return _eval(c, model=c.broken_model(model__safetensors=data[: len(data) // 2]))


def _big_recipe(c: Ctx):
    return c.recipe("steps: [{method: magnitude}]\n" + "# padding\n" * 150_000)



def _without(module: str, argv_of):
    """``argv_of(c)`` with ``module`` made unimportable (as if its extra were not installed)."""
    def setup(c: Ctx):
        c.monkeypatch.setitem(sys.modules, module, None)
        return argv_of(c)

    return setup


def _report(c: Ctx, *extra):
    return ["report", str(c.model), "--out", str(c.tmp / "page"), "--quiet", "--limit", "1", "--nwindows", "1",
            *map(str, extra)]


def _report_into_foreign_folder(c: Ctx, *extra):
    c.write("page/notes.txt", "my notes\n")
    return _report(c, *extra)


def _report_over_a_look_alike(c: Ctx):
    """A folder holding what a report holds (report.md, a plot) and a photo, no prunekit.json."""
    c.write("page/report.md", "# my own report\n")
    c.write("page/cat.png", b"\x89PNG not really")
    return _report(c, "--overwrite")


def _pickle_only(c: Ctx) -> Path:
    """A copy of the tiny model whose weights are only ``pytorch_model.bin`` (a pickle, written by the test)."""
    from safetensors.torch import load_file

    folder = c.broken_model(model__safetensors=None)
    torch.save(load_file(c.model / "model.safetensors"), folder / "pytorch_model.bin")
    return folder


def _manifest_names_an_uninstalled_model(c: Ctx):
    """``report`` against a large embedded model that is not installed (here named by the flag; named
    only by prunekit.json, the report goes on without a baseline: see the test after the table):
    nothing is installed or converted, one line says how."""
    from prunekit import assets

    def refuse(*args, **kwargs):
        raise AssertionError("prunekit started an install because a file named a model")

    c.monkeypatch.setattr(assets, "install", refuse)
    c.monkeypatch.setattr(assets, "_package_dir", lambda package: None)  # its wheels are not installed
    c.monkeypatch.setenv("PRUNEKIT_CACHE", str(c.tmp / "empty-cache"))
    target = c.manifest_model(json.dumps({"prunekit_version": "0.1.0", "source_model": "qwen2.5-1.5b"}))
    return ["report", str(target), "--out", str(c.tmp / "page"), "--quiet", "--limit", "1", "--nwindows", "1",
            "--baseline", "qwen2.5-1.5b"]


def _linked_file(c: Ctx, name: str = "tokenizer_config.json", command: str = "prune"):
    """A copy of the model whose ``name`` is a symbolic link to a file outside the folder."""
    secret = c.write("private/secret.json", (c.model / name).read_text() if (c.model / name).exists() else "{}")
    folder = c.broken_model(**{name.replace(".", "__"): None})
    (folder / name).symlink_to(secret)
    return c.prune(model=folder) if command == "prune" else [command, "--model", str(folder)]

# id: (setup, exit code, fragment of the one line, fails before any weights load)
ROWS = {
    # --out / --overwrite never replace what is not prunekit's
    "out contains the input": (_prune_output_parent, 2, "contains the input model folder", True),
    "out inside the input": (_inside_input, 2, "inside the input model folder", True),
    "out is the current directory": (_cwd, 2, "current directory", True),
    "out contains the current directory": (_cwd_parent, 2, "current directory", True),
    "out is the cache": (lambda c: _cache(c, "", True), 2, "prunekit's cache", True),
    "out is the embedded model in the cache": (lambda c: _cache(c, "models/smollm2-135m", True), 2,
                                               "prunekit's cache", True),
    "out new folder inside the cache": (lambda c: _cache(c, "models/mine", False), 2, "prunekit's cache", True),
    "out is the home directory": (_home, 2, "home directory", True),
    "overwrite a folder prunekit did not write": (_foreign_folder, 2, "has no prunekit.json", True),
    "overwrite an output holding a foreign file": (_foreign_file_in_output, 2, "holds 'thesis.tex'", True),
    "out not writable": (_not_writable, 2, "is not writable", True),
    "out below a file": (_parent_is_file, 2, "is a file, not a folder", True),
    # no file starts an install; pickles only with an explicit opt-in; no file comes in through a link
    "prunekit.json names an uninstalled model": (_manifest_names_an_uninstalled_model, 2,
                                                 "the embedded model 'qwen2.5-1.5b' is not installed here", True),
    "embedded model not installed": (lambda c: (c.monkeypatch.setenv("PRUNEKIT_CACHE", str(c.tmp / "empty")),
                                                c.monkeypatch.setattr("prunekit.assets._package_dir", lambda p: None),
                                                c.prune(model="gemma3-270m"))[-1], 2,
                                     "the embedded model 'gemma3-270m' is not installed here; install it with", True),
    "pickle-only folder (prune)": (lambda c: c.prune(model=_pickle_only(c)), 2,
                                   "holds only pickle weights (pytorch_model.bin): pass --trust-pickle-weights", True),
    "pickle-only folder (eval)": (lambda c: _eval(c, model=_pickle_only(c)), 2, "--trust-pickle-weights", True),
    "pickle-only folder (inspect)": (lambda c: ["inspect", "--model", str(_pickle_only(c))], 2,
                                     "--trust-pickle-weights", True),
    "pickle-only folder (structured)": (lambda c: c.prune("--structure", "mlp", "--sparsity", "0.2",
                                                          model=_pickle_only(c)), 2, "--trust-pickle-weights", True),
    "tokenizer config linked from outside (prune)": (_linked_file, 2, "'tokenizer_config.json' is a symbolic link to",
                                                     True),
    "tokenizer linked from outside (inspect)": (lambda c: _linked_file(c, "tokenizer.json", "inspect"), 2,
                                                "outside the folder", True),
    # method options are typed and ranged, checked before the model loads
    "sparsegpt blocksize -5": (lambda c: c.prune("--method", "sparsegpt", "--option", "blocksize=-5"), 2,
                               "blocksize (method 'sparsegpt') must be >= 1, got -5", True),
    "sparsegpt blocksize 0": (lambda c: c.prune("--method", "sparsegpt", "--option", "blocksize=0"), 2,
                              "blocksize (method 'sparsegpt') must be >= 1, got 0", True),
    "sparsegpt percdamp abc": (lambda c: c.prune("--method", "sparsegpt", "--option", "percdamp=abc"), 2,
                               "percdamp (method 'sparsegpt') must be a number, got 'abc'", True),
    "sparsegpt percdamp -1": (lambda c: c.prune("--method", "sparsegpt", "--option", "percdamp=-1"), 2,
                              "percdamp (method 'sparsegpt') must be in [0, 10], got -1", True),
    "gblm alpha true": (lambda c: c.prune("--method", "gblm", "--option", "alpha=true"), 2,
                        "alpha (method 'gblm') must be a number, got True", True),
    "cfsp beta -1": (lambda c: c.prune("--structure", "mlp", "--method", "cfsp", "--option", "beta=-1"), 2,
                     "beta (structured criterion 'cfsp') must be", True),
    # silent nonsense
    "eval seqlen 1": (lambda c: _eval(c, "--seqlen", "1", "--nwindows", "1"), 2, "--seqlen must be an integer >= 2",
                      True),
    "eval seqlen beyond positions": (lambda c: _eval(c, "--seqlen", "300", "--nwindows", "1"), 2,
                                     "longer than the model's 256 positions", True),
    "prune seqlen beyond positions": (lambda c: c.prune("--seqlen", "300"), 2,
                                      "calibration seqlen 300 is longer than the model's 256 positions", True),
    "recipe []": (lambda c: c.recipe("[]\n"), 2, "is empty", True),
    "recipe null": (lambda c: c.recipe("null\n"), 2, "is empty", True),
    "recipe steps []": (lambda c: c.recipe("steps: []\n"), 2, "steps must be a non-empty list", True),
    "recipe seqlen true": (lambda c: c.recipe("calibration: {nsamples: 2, seqlen: true}\n"), 2,
                           "seqlen (calibration) must be an integer", True),
    "recipe unquoted 2:4": (lambda c: c.recipe("steps: [{method: magnitude, pattern: 2:4}]\n"), 2,
                            "quote it, '2:4'", True),
    "recipe empty targets": (lambda c: c.recipe("steps: [{method: magnitude, targets: []}]\n"), 2,
                             "targets is empty", True),
    "structured with --pattern": (lambda c: c.prune("--structure", "mlp", "--ratio", "0.2", "--pattern", "2:4"), 2,
                                  "--pattern '2:4' applies only to oneshot pruning", True),
    "structured with --ratio and --sparsity": (lambda c: c.prune("--structure", "mlp", "--ratio", "0.2", "--sparsity",
                                                                 "0.5"), 2, "--ratio 0.2 is the old spelling", True),
    "structured with --device": (lambda c: c.prune("--structure", "mlp", "--ratio", "0.2", "--device", "cpu"), 2,
                                 "--device 'cpu' does not apply", True),
    "--ratio without --structure": (lambda c: c.prune("--ratio", "0.2"), 2, "--ratio 0.2 applies only to structured",
                                    True),
    "--remove without blocks": (lambda c: c.prune("--structure", "mlp", "--ratio", "0.2", "--remove", "1"), 2,
                                "remove 1 applies only to structure blocks", True),
    "--ratio and --remove for blocks": (lambda c: c.prune("--structure", "blocks", "--ratio", "0.5", "--remove", "1"),
                                        2, "give one of them", True),
    "--round-to without mlp": (lambda c: c.prune("--structure", "heads", "--ratio", "0.3", "--round-to", "16"), 2,
                               "--round-to 16 applies only to structure mlp", True),
    "--round-to 1000": (lambda c: c.prune("--structure", "mlp", "--ratio", "0.2", "--method", "magnitude",
                                          "--round-to", "1000"), 2, "--round-to 1000 is not below the MLP width 120",
                        False),
    "receipt option not an integer": (lambda c: c.prune("--structure", "mlp", "--ratio", "0.2", "--option",
                                                        "speed_runs=abc"), 2, "speed_runs must be an integer", True),
    # one line instead of a traceback
    "model name typo": (lambda c: c.prune(model="smollm2"), 2, "did you mean 'smollm2-135m'", True),
    "hub id offline": (lambda c: _eval(c, model="NoSuchOrg/no-such-model-7b"), 2,
                       "not an embedded model, a local folder or a hub id", True),
    "truncated safetensors": (_truncated, 2, "is truncated or not a safetensors file", False),
    "garbage safetensors": (lambda c: _eval(c, model=c.broken_model(model__safetensors=b"\xff" * 64)), 2,
                            "is truncated or not a safetensors file", False),
    "garbage config.json": (lambda c: _eval(c, model=c.broken_model(config__json="{not json")), 2,
                            "unreadable config.json", True),
    "folder without weights": (lambda c: _eval(c, model=c.broken_model(model__safetensors=None)), 2,
                               "has no weights", True),
    "eval nwindows -1": (lambda c: _eval(c, "--nwindows", "-1", "--seqlen", "16"), 2,
                         "--nwindows must be an integer >= 1", True),
    "eval seqlen 0": (lambda c: _eval(c, "--nwindows", "1", "--seqlen", "0"), 2, "--seqlen must be an integer >= 2",
                      True),
    "device foo": (lambda c: c.prune("--device", "foo"), 2, "unknown device 'foo'", True),
    "device cuda without a GPU": (_no_gpu, 2, "no CUDA GPU is available", True),
    # dtypes and model families (issue 10)
    "dtype unknown": (lambda c: c.prune("--dtype", "bf17"), 2,
                      "unknown dtype 'bf17' (choices: auto, bfloat16, float16, float32)", True),
    "dtype unknown (structured)": (lambda c: c.prune("--structure", "mlp", "--sparsity", "0.2", "--dtype", "int8"), 2,
                                   "unknown dtype 'int8'", True),
    "eval dtype unknown": (lambda c: _eval(c, "--dtype", "float8"), 2, "unknown dtype 'float8'", True),
    "model without a block list": (_no_block_list, 2, "model type 'olmo2' (Olmo2ForCausalLM) has no recognisable "
                                   "decoder block list", True),
    "structured on a discovered family": (_structured_discovered, 2, "structured pruning needs the attention and MLP "
                                          "layout of the model", True),
    "recipe nested 100k deep (YAML)": (lambda c: c.recipe("[" * 100_000 + "]" * 100_000), 2, "nested deeper than 32",
                                       True),
    "recipe nested 100k deep (JSON)": (lambda c: c.recipe("[" * 100_000 + "]" * 100_000, "recipe.json"), 2,
                                       "nested deeper than 32", True),
    "recipe with a python tag": (lambda c: c.recipe("!!python/object/apply:os.system ['echo owned']\n"), 2,
                                 "YAML tags such as", True),
    "recipe with a binary tag": (lambda c: c.recipe("steps: !!binary aGVsbG8=\n"), 2, "YAML tags such as", True),
    "recipe over 1 MB": (_big_recipe, 2, "larger than 1,048,576 bytes", True),
    "prunekit.json not JSON": (lambda c: _eval(c, model=c.manifest_model("{tampered")), 2,
                               "prunekit.json' is not valid JSON", True),
    "prunekit.json a list": (lambda c: ["inspect", "--model", str(c.manifest_model("[]"))], 2,
                             "must hold a JSON object", True),
    "prunekit.json layer_shapes garbage": (lambda c: ["inspect", "--model",
                                                      str(c.manifest_model('{"layer_shapes": "garbage"}'))], 2,
                                           "layer_shapes in", True),
    "prunekit.json layer_shapes wrong size": (
        lambda c: ["inspect", "--model", str(c.manifest_model(json.dumps(
            {"layer_shapes": {"linears": {"model.layers.0.mlp.down_proj": [60, 100, False]}}})))],
        2, "the weights file holds [60, 120]", True),
    "disk full while saving (OSError)": (_save_fails(OSError(errno.ENOSPC, "No space left on device")), 2,
                                         "the disk is full; nothing was written", False),
    "disk full while saving (safetensors)": (_save_fails(__import__("safetensors").SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)")), 2,
        "the disk is full; nothing was written", False),
    "disk full while saving in memory (OSError)": (_save_fails(OSError(errno.ENOSPC, "No space left on device"),
                                                               stream=False), 2,
                                                   "the disk is full; nothing was written", False),
    "disk full while saving in memory (safetensors)": (_save_fails(__import__("safetensors").SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"), stream=False), 2,
        "the disk is full; nothing was written", False),
    "Ctrl-C while loading": (_load_interrupted, 130, "prunekit eval: interrupted", False),
    "Ctrl-C while saving": (_save_fails(KeyboardInterrupt()), 130, "prunekit prune: interrupted", False),
    "Ctrl-C while saving in memory": (_save_fails(KeyboardInterrupt(), stream=False), 130,
                                      "prunekit prune: interrupted", False),
    # streaming (the default of one-shot prune from a folder): the shards are checked before any work
    "missing shard": (_missing_shard, 2, "listed in model.safetensors.index.json is missing", True),
    "truncated shard": (_truncated_shard, 2, "is truncated or not a safetensors file", True),
    "truncated model.safetensors (prune)": (
        lambda c: c.prune(model=c.broken_model(
            model__safetensors=(c.model / "model.safetensors").read_bytes()[:-100])), 2,
        "is truncated or not a safetensors file", True),
    "garbage shard index": (lambda c: c.prune(model=c.broken_model(
        c.sharded, **{"model__safetensors__index__json": "{not json"})), 2, "is not a valid shard index", True),
    "checkpoint lacks a tensor (prune)": (_lacking_tensor, 2, "lack 1 tensor(s), e.g. 'model.layers.1.mlp.up_proj.weight'",
                                          True),
    "--stream with gblm": (lambda c: c.prune("--stream", "--method", "gblm"), 2,
                           "gblm needs gradients of the whole model; prune it in memory", True),
    "--stream with structured pruning": (lambda c: c.prune("--stream", "--structure", "mlp", "--sparsity", "0.2"), 2,
                                         "--stream applies to one-shot pruning", True),
    # evaluation (issue 11): tasks, lm-eval, report
    "eval unknown task": (lambda c: _eval(c, "--tasks", "wordnet-glos"), 2,
                          "unknown task 'wordnet-glos'; did you mean 'wordnet-gloss'?", True),
    "eval lm-eval task without lm-eval": (_without("lm_eval", lambda c: _eval(c, "--tasks", "hellaswag")), 2,
                                          "pip install 'prunekit[lmeval]'", True),
    "eval --lmeval without lm-eval": (_without("lm_eval", lambda c: _eval(c, "--tasks", "wordnet-gloss", "--lmeval")),
                                      2, "lm-eval-harness is not installed; install the extra: pip install "
                                      "'prunekit[lmeval]'", True),
    "eval --limit 0": (lambda c: _eval(c, "--tasks", "wordnet-gloss", "--limit", "0"), 2,
                       "--limit must be an integer >= 1, got 0", True),
    "eval --nwindows abc": (lambda c: _eval(c, "--nwindows", "abc"), 2, "--nwindows must be an integer >= 1 or 'all'",
                            True),
    "eval --stride beyond --seqlen": (lambda c: _eval(c, "--stride", "17"), 2, "--stride 17 is longer than --seqlen 16",
                                      True),
    "report --limit 0": (lambda c: _report(c, "--limit", "0"), 2, "--limit must be an integer >= 1", True),
    "report without matplotlib": (_without("matplotlib", _report), 2, "pip install 'prunekit[report]'", True),
    "prune --report without matplotlib": (_without("matplotlib", lambda c: c.prune("--report")), 2,
                                          "pip install 'prunekit[report]'", True),
    "report into an existing folder": (_report_into_foreign_folder, 2, "already exists; pass --overwrite", True),
    "report --overwrite of a foreign folder": (lambda c: _report_into_foreign_folder(c, "--overwrite"), 2,
                                               "has no prunekit.json", True),
    "report --overwrite of a look-alike folder": (_report_over_a_look_alike, 2, "has no prunekit.json", True),
    "report --out the current directory": (lambda c: [*_report(c, "--overwrite")[:2], "--out", ".", "--quiet"], 2,
                                           "current directory", True),
    "report of an lm-eval task": (lambda c: _report(c, "--tasks", "hellaswag"), 2, "the report scores prunekit's tasks",
                                  True),
}


# ------------------------------------------------------------------ vocabulary and delta pruning (issue 13)

def _vocab(c: Ctx, *extra, text: str | None = "brown:r") -> list[str]:
    return ["vocab", "--model", str(c.model), "--out", str(c.out), "--quiet",
            *(["--text", text] if text else []), *map(str, extra)]


def _delta(c: Ctx, *extra, finetuned=None) -> list[str]:
    return ["delta", "--base", str(c.model), "--finetuned", str(finetuned or c.model), "--out", str(c.out), "--quiet",
            *map(str, extra)]


def _other_shapes(c: Ctx) -> Path:
    """A model like the tiny one but with a wider MLP (its weights never load: the configs differ)."""
    from transformers import LlamaConfig

    config = LlamaConfig.from_pretrained(c.model)
    config.intermediate_size = 96
    return _config_model(c, config)


def _wrong_base_delta(c: Ctx):
    from prunekit.delta.sparse import save_sparse_delta
    from prunekit.models import load_model

    base = load_model(c.model)
    other = load_model(c.model)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.add_(0.01)
    delta = save_sparse_delta(c.tmp / "delta.safetensors", other, base)  # made against `other`
    return ["delta", "apply", str(c.model), str(delta), "--out", str(c.out), "--quiet"]


VOCAB_DELTA_ROWS = {
    "vocab text is an empty file": (lambda c: _vocab(c, text=str(c.write("empty.txt", ""))), 2,
                                    "has no tokens, so the kept vocabulary would be empty", True),
    "vocab text not UTF-8": (lambda c: _vocab(c, text=str(c.write("latin1.txt", "caf\xe9 au lait\n".encode("latin-1")))),
                             2, "latin1.txt' is not UTF-8 text (byte 3: invalid continuation byte)", True),
    "vocab text missing": (lambda c: _vocab(c, text=str(c.tmp / "nope.txt")), 2,
                           "neither 'brown[:genres]' nor an existing text file", True),
    "vocab keep file with a word": (lambda c: _vocab(c, "--keep-file", c.write("keep.txt", "12\nabc\n")), 2,
                                    "line 2: 'abc' is not a token id", True),
    "vocab keep file id beyond the vocabulary": (lambda c: _vocab(c, "--keep-file", c.write("keep.txt", "99999999")),
                                                 2, "token id 99999999 is not in the vocabulary", True),
    "vocab keep file missing": (lambda c: _vocab(c, "--keep-file", c.tmp / "nope.txt"), 2,
                                "keep file", True),
    "vocab --top -1": (lambda c: _vocab(c, "--top", "-1"), 2, "top (vocab step) must be >= 0", True),
    "vocab --no-text with a keep file of comments only": (
        lambda c: _vocab(c, "--no-text", "--keep-file", c.write("keep.txt", "# nothing yet\n"), text=None), 2,
        "no text, top or keep ids, so the kept vocabulary would be empty", True),
    "vocab --text and --no-text": (lambda c: _vocab(c, "--no-text"), 2, "--text and --no-text contradict", True),
    "vocab recipe of oneshot steps": (lambda c: _vocab(c, "--recipe", c.write("r.yaml", "steps: [{method: wanda}]\n")),
                                      2, "runs one vocab step", True),
    "vocab out inside the input": (lambda c: [*_vocab(c)[:4], str(c.model / "pruned"), "--text", "brown:r"], 2,
                                   "inside the input model folder", True),
    "delta base and fine-tuned of different shapes": (lambda c: _delta(c, finetuned=_other_shapes(c)), 2,
                                                      "intermediate_size 120 but the fine-tuned model 96", True),
    "delta --drop 1.5": (lambda c: _delta(c, "--drop", "1.5"), 2, "sparsity (delta step) must be in [0, 1)", True),
    "delta unknown method": (lambda c: _delta(c, "--method", "dar"), 2, "did you mean 'dare'", True),
    "delta darex-q bad scope": (lambda c: _delta(c, "--method", "darex-q", "--option", "scope=row"), 2,
                                "scope (delta method 'darex-q') must be one of", True),
    "delta without --finetuned": (lambda c: ["delta", "--base", str(c.model), "--out", str(c.out)], 2,
                                  "--finetuned is required", True),
    "delta sparse out not .safetensors": (lambda c: _delta(c, "--format", "sparse"), 2,
                                          "a sparse delta is one file ending in .safetensors", True),
    "delta apply a file that is not a delta": (
        lambda c: ["delta", "apply", str(c.model), str(c.model / "model.safetensors"), "--out", str(c.out)], 2,
        "is not a prunekit sparse delta", True),
    "delta apply to another base": (_wrong_base_delta, 2, "was made against another base", False),
    # --out rules of both outputs of `prunekit delta` and of `delta apply`
    "delta out inside the fine-tuned model": (lambda c: _delta(c, finetuned=c.sharded)[:6] + [
        str(c.sharded / "merged"), "--quiet"], 2, "inside the input model folder", True),
    "delta sparse out exists": (lambda c: _delta(c)[:6] + [
        str(c.write("d.safetensors", b"x")), "--quiet", "--format", "sparse"], 2, "already exists; pass --overwrite",
        True),
    "delta sparse --overwrite of a file that is not a delta": (lambda c: _delta(c)[:6] + [
        str(c.write("d.safetensors", b"x")), "--quiet", "--format", "sparse", "--overwrite"], 2,
        "is not a sparse delta prunekit wrote", True),
    "delta sparse out inside the base": (lambda c: _delta(c)[:6] + [
        str(c.model / "d.safetensors"), "--quiet", "--format", "sparse"], 2, "inside the input model folder", True),
    "delta apply out inside the base": (lambda c: _wrong_base_delta(c)[:4] + ["--out", str(c.model / "merged")], 2,
                                        "inside the input model folder", True),
}
ROWS.update(VOCAB_DELTA_ROWS)


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its size and modification time (hidden temp folders included)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_size if name in filenames else -1, st.st_mtime_ns)
    return out


def check_row(argv: list[str], expected_code: int, fragment: str, early: bool, root: Path,
              monkeypatch: pytest.MonkeyPatch, capsys, argparse_exit: bool = False) -> None:
    """Run one table row in-process: exit code, one line on stderr holding ``fragment``, nothing created,
    changed or removed under ``root``; with ``early``, loading any weights fails the row. The table
    modules of issue 18 (values, edges) share it. ``argparse_exit``: argparse's SystemExit(2) counts
    as the exit code."""
    if early:
        from transformers import AutoModelForCausalLM

        def loaded(*args, **kwargs):
            raise AssertionError("the weights were loaded before the bad input was found")

        monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", loaded)
        monkeypatch.setattr("prunekit.core.shards.Checkpoint.read", loaded)  # the streamed path's one reader
    before = snapshot(root)
    capsys.readouterr()
    try:
        code = main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped prunekit.cli.main")
    except SystemExit as stop:
        if not argparse_exit:
            raise
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == expected_code, err
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert err.startswith("prunekit ")
    assert snapshot(root) == before  # nothing written, changed or removed (no temp folders either)


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(row, tiny_source, tiny_sharded, tmp_path, monkeypatch,
                                                          capsys):
    setup, expected_code, fragment, early = ROWS[row]
    model, sharded = tmp_path / "models" / "m", tmp_path / "models" / "sharded"
    shutil.copytree(tiny_source, model, copy_function=os.link)
    shutil.copytree(tiny_sharded, sharded, copy_function=os.link)
    argv = setup(Ctx(tmp_path, model, monkeypatch, sharded))
    check_row(argv, expected_code, fragment, early, tmp_path, monkeypatch, capsys)


def test_out_of_a_prunekit_output_is_replaced_with_overwrite(tiny_source, tmp_path, capsys):
    """The rule's positive side: a folder prunekit wrote (manifest + model + tokenizer files) is replaced."""
    out = tmp_path / "out"
    argv = ["prune", "--model", str(tiny_source), "--out", str(out), "--quiet", "--nsamples", "2", "--seqlen", "16",
            "--calibration", "brown:r", "--method", "magnitude"]
    assert main(argv) == 0
    assert main([*argv, "--overwrite", "--sparsity", "0.3"]) == 0
    assert json.loads((out / "prunekit.json").read_text())["steps"][0]["sparsity"] == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_save_leaves_nothing_after_the_next_save(tiny_source, tmp_path, caplog, capsys):
    """Temporary folders prunekit made (marker inside naming the folder) for a dead process are removed,
    with a warning; those of a live process, and every look-alike a user made, are left alone."""
    from prunekit.core.io import MARKER, TEMP_PREFIX

    dead = _dead_pid()
    stale = [tmp_path / f"{TEMP_PREFIX}{dead}-abcd1234", tmp_path / f"{TEMP_PREFIX}{dead}-efgh5678"]
    live = tmp_path / f"{TEMP_PREFIX}{os.getppid()}-ijkl9012"
    kept = [live,
            tmp_path / ".photos.old-2023-holidays",  # a user's folder of the old naming scheme's shape
            tmp_path / f".run.tmp-{dead}-abcd1234",  # the old naming scheme: no marker, never removed now
            tmp_path / f"{TEMP_PREFIX}{dead}-nomarker",  # our name, but no marker
            tmp_path / f"{TEMP_PREFIX}{dead}-wrongmrk"]  # our name, a marker naming another folder
    for folder in [*stale, *kept]:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half a model")
    for folder in [*stale, live]:
        (folder / MARKER).write_text(f"prunekit temporary folder {folder.name}\n")
    (kept[-1] / MARKER).write_text(f"prunekit temporary folder {stale[0].name}\n")
    argv = ["prune", "--model", str(tiny_source), "--out", str(tmp_path / "out"), "--quiet", "--nsamples", "2",
            "--seqlen", "16", "--calibration", "brown:r", "--method", "magnitude"]
    with caplog.at_level("WARNING", logger="prunekit.core.io"):
        assert main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*(k.name for k in kept), "out"])
    assert all((k / "model.safetensors").read_bytes() == b"half a model" for k in kept)
    removed = [r.getMessage() for r in caplog.records if "no longer running" in r.getMessage()]
    assert len(removed) == 2 and all(str(dead) in m for m in removed)


def test_readme_lists_the_rules_of_out_and_overwrite():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Bad input"):]
    section = section[: section.index("\n## ", 1)]
    for needle in ("--overwrite", "prunekit.json", "cache", "current directory", "home directory", "inside",
                   "--trust-pickle-weights", "symbolic link", "SIGINT", "SIGTERM", "130", "143", "--debug",
                   "PRUNEKIT_DEBUG=1", "exit code 1", ".prunekit-temporary"):
        assert needle in section, needle
    from prunekit.cli import build_parser

    writing = {"prune", "demo", "export", "vocab", "delta", "report", "train"}  # every command with an output
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert writing <= commands
    for command in writing:
        assert f"`{command}" in section, command
    assert "`data score|select|report|train`" in section


def test_pickle_weights_load_with_the_opt_in_and_the_output_is_safetensors(tiny_source, tmp_path):
    """``--trust-pickle-weights`` reads a pickle-only folder (weights_only) to the same weights, and what
    prunekit writes from it is safetensors only."""
    from safetensors.torch import load_file

    from prunekit.models import load_model

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_source, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    reference = load_model(tiny_source).state_dict()
    loaded = load_model(folder, trust_pickle_weights=True).state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    out = tmp_path / "out"
    assert main(["prune", "--model", str(folder), "--out", str(out), "--quiet", "--nsamples", "2", "--seqlen", "16",
                 "--calibration", "brown:r", "--method", "magnitude", "--trust-pickle-weights"]) == 0
    assert any(out.glob("*.safetensors")) and not [p for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pkl")]


def test_a_manifest_naming_an_uninstalled_model_installs_nothing(tiny_source, tmp_path, monkeypatch, capsys):
    """A prunekit.json whose source_model is a large embedded model that is not installed: the report
    is written without a baseline; no pip install and no conversion start (issue 18, class 4)."""
    from prunekit import assets

    def refuse(*args, **kwargs):
        raise AssertionError("prunekit started an install because a file named a model")

    target = tmp_path / "target"
    shutil.copytree(tiny_source, target)
    (target / "prunekit.json").write_text(json.dumps({"prunekit_version": "0.1.0", "source_model": "qwen2.5-1.5b"}))
    monkeypatch.setattr(assets, "install", refuse)
    monkeypatch.setattr(assets, "join_chunks", refuse)
    monkeypatch.setattr(assets, "_package_dir", lambda package: None)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "empty-cache"))
    assert main(["report", str(target), "--out", str(tmp_path / "page"), "--quiet", "--tasks", "none",
                 "--nwindows", "1"]) == 0, capsys.readouterr().err
    assert "Baseline: none" in (tmp_path / "page" / "report.md").read_text()
    assert not (tmp_path / "empty-cache" / "models").exists()
