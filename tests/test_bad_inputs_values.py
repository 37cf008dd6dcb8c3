"""Bad values (issue 18, classes 8 and 11): silent wrong results and unbounded resources.

One table like :mod:`tests.test_bad_inputs`: each row builds an argv (and the files it needs) from the
tiny random Llama, runs ``prunekit.cli.main`` in-process and checks exit code 2, one line on stderr
holding the fragment, and nothing written under ``tmp_path``. Rows marked ``early`` must fail before
any weights load. Rows that would allocate without bound on unfixed code are guarded so that they
fail cheaply there (a patched ``available_memory`` or ``set_num_threads``), never allocating for real.
After the table: OWL and global allocation hit the requested sparsity, strict JSON output, and bounded
reading of a large calibration file.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from tests.test_bad_inputs import Ctx, check_row, tiny_source  # noqa: F401

GB = 10**9


# ------------------------------------------------------------------ helpers

def _model_with(c: Ctx, name: str, change) -> "os.PathLike":
    """A copy of the tiny model whose tensor ``name`` is ``change(tensor)`` (changed in place)."""
    tensors = load_file(str(c.model / "model.safetensors"))
    change(tensors[name])
    return c.broken_model(model__safetensors=save(tensors, metadata={"format": "pt"}))


def _nan_at(index: int = 0, value: float = float("nan")):
    def change(t):
        t.view(-1)[index] = value
    return change


UP = "model.layers.1.mlp.up_proj.weight"


def _sparse_delta(c: Ctx, tamper) -> list[str]:
    """``delta apply`` of a sparse delta made from the tiny model, whose tensors ``tamper`` then changes
    (the header, with the base's fingerprint, stays as prunekit wrote it)."""
    from prunekit.delta.sparse import save_sparse_delta
    from prunekit.models import load_model

    base, merged = load_model(c.model), load_model(c.model)
    with torch.no_grad():
        merged.model.layers[0].mlp.up_proj.weight.view(-1)[:50].add_(0.5)
    path = save_sparse_delta(c.tmp / "delta.safetensors", base, merged)
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tamper(tensors, "model.layers.0.mlp.up_proj.weight")
    save_file(tensors, str(path), metadata=metadata)
    return ["delta", "apply", str(c.model), str(path), "--out", str(c.out), "--quiet"]


def _repeat(tensors, name):
    tensors[f"{name}.indices"][1] = tensors[f"{name}.indices"][0]


def _as(dtype):
    def tamper(tensors, name):
        tensors[f"{name}.indices"] = tensors[f"{name}.indices"].to(dtype)
        if dtype is torch.bool:
            tensors[f"{name}.values"] = tensors[f"{name}.values"][:50]
    return tamper


def _two_d(tensors, name):
    tensors[f"{name}.indices"] = tensors[f"{name}.indices"].reshape(5, 10)


def _nan_value(tensors, name):
    tensors[f"{name}.values"][3] = float("nan")


def _delta(c: Ctx, finetuned, *extra) -> list[str]:
    return ["delta", "--base", str(c.model), "--finetuned", str(finetuned), "--out", str(c.out), "--quiet",
            *map(str, extra)]


def _lora(c: Ctx, alpha=8.0, factor=None, *extra) -> list[str]:
    from tests.test_delta_lora import write_peft

    from prunekit.models import load_model

    folder = c.tmp / "adapter"
    write_peft(folder, load_model(c.model), ["model.layers.0.self_attn.q_proj"], alpha=alpha)
    if factor is not None:
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        factor(tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return ["delta", "--base", str(c.model), "--lora", str(folder), "--out", str(c.out), "--quiet", *map(str, extra)]


def _lora_alpha_json(c: Ctx, text: str) -> list[str]:
    argv = _lora(c)
    config = c.tmp / "adapter" / "adapter_config.json"
    config.write_text(config.read_text().replace('"lora_alpha": 8.0', f'"lora_alpha": {text}'))
    return argv


def _memory(c: Ctx, available: int, argv: list[str]) -> list[str]:
    """``argv`` on a machine with ``available`` bytes available (fails at once on code without the check)."""
    c.monkeypatch.setattr("prunekit.core.budget.available_memory", lambda: available)
    return argv


def _no_threads(c: Ctx, argv: list[str]) -> list[str]:
    """``argv``, with torch's thread setter replaced: on unfixed code 100,000 threads crash the process."""
    def refuse(n):
        raise AssertionError(f"set_num_threads({n}) was called")

    c.monkeypatch.setattr(torch, "set_num_threads", refuse)
    return argv


def _train(*extra) -> list[str]:
    return ["train", "--quiet", "--epochs", "1", "--limit", "256", *map(str, extra)]


# id: (setup, exit code, fragment of the one line, fails before any weights load)
ROWS = {
    # 8a: sparse delta files: the index tensors are checked when read
    "delta apply repeated indices": (lambda c: _sparse_delta(c, _repeat), 2,
                                     "'model.layers.0.mlp.up_proj.weight.indices' is not strictly increasing", False),
    "delta apply float indices": (lambda c: _sparse_delta(c, _as(torch.float32)), 2,
                                  "indices' has dtype float32; indices are int32 or int64", False),
    "delta apply bool indices": (lambda c: _sparse_delta(c, _as(torch.bool)), 2, "indices' has dtype bool", False),
    "delta apply 2-D indices": (lambda c: _sparse_delta(c, _two_d), 2, "indices' has shape [5, 10]", False),
    "delta apply NaN value": (lambda c: _sparse_delta(c, _nan_value), 2,
                              "'model.layers.0.mlp.up_proj.weight.values' holds 1 non-finite value", False),
    # 8b: non-finite weights or statistics of a target layer: refused, not pruned into a chance-level mask
    "prune NaN weight (streamed)": (lambda c: c.prune("--method", "wanda", model=_model_with(c, UP, _nan_at(7))), 2,
                                    "the weights of layer 'model.layers.1.mlp.up_proj' holds 1 non-finite value",
                                    False),
    "prune inf weight (in memory)": (lambda c: c.prune("--method", "magnitude", "--no-stream",
                                                       model=_model_with(c, UP, _nan_at(3, float("inf")))), 2,
                                     "the weights of layer 'model.layers.1.mlp.up_proj' holds 1 non-finite", False),
    "prune NaN weight, global allocation": (lambda c: c.prune("--method", "magnitude", "--allocation", "global",
                                                              model=_model_with(c, UP, _nan_at(0))), 2,
                                            "holds 1 non-finite value (NaN or inf)", False),
    "prune NaN weight, owl allocation": (lambda c: c.prune("--method", "wanda", "--allocation", "owl",
                                                           model=_model_with(c, UP, _nan_at(0))), 2,
                                         "holds 1 non-finite value (NaN or inf)", False),
    "prune inf norm: non-finite statistics": (
        lambda c: c.prune("--method", "sparsegpt", model=_model_with(
            c, "model.layers.0.post_attention_layernorm.weight", _nan_at(0, float("inf")))), 2,
        "the calibration statistics (sq_norms) of layer 'model.layers.0.mlp.gate_proj'", False),
    # 8d: delta and LoRA inputs that would write inf or NaN weights
    "delta fine-tuned model with NaN": (lambda c: _delta(c, _model_with(c, UP, _nan_at(5))), 2,
                                        "the fine-tuned model: tensor 'model.layers.1.mlp.up_proj.weight' holds 1", False),
    "delta fine-tuned NaN embedding (sparse)": (
        lambda c: _delta(c, _model_with(c, "model.embed_tokens.weight", _nan_at(5)), "--format", "sparse",
                         "--out", c.tmp / "d.safetensors"), 2, "tensor 'model.embed_tokens.weight' holds 1", False),
    "lora_alpha 1e308": (lambda c: _lora(c, alpha=1e308), 2, "lora_alpha 1e+308 is beyond the sane bound 1e+06", True),
    "lora_alpha Infinity": (lambda c: _lora_alpha_json(c, "Infinity"), 2, "lora_alpha inf is beyond the sane bound",
                            True),
    "lora_alpha NaN": (lambda c: _lora_alpha_json(c, "NaN"), 2, "lora_alpha must be a positive float, got nan", True),
    "lora factor with NaN": (lambda c: _lora(c, 8.0, _nan_at(2)), 2, "lora_A holds 1 non-finite value", True),
    "lora factors overflow when merged": (lambda c: _lora(c, 1e6, lambda t: t.mul_(1e37)), 2,
                                          "the delta s*B@A of module 'model.layers.0.self_attn.q_proj' holds", False),
    # 8e: owl cannot go beyond 0.99 per block, so it refuses what it cannot reach
    "owl sparsity 0.995": (lambda c: c.prune("--allocation", "owl", "--sparsity", "0.995"), 2,
                           "allocation owl prunes at most 0.99 of every block", True),
    # 11: unbounded resources, refused from the settings before anything is allocated
    "prune --nsamples 1e9": (lambda c: _memory(c, 8 * GB, c.prune("--nsamples", "1000000000", "--seqlen", "16", calibration=False)), 2,
                             "but this machine has 8.0 GB of memory available (MemAvailable); lower --nsamples", True),
    "prune --nsamples beyond a small machine": (
        lambda c: _memory(c, 50 * 10**6, c.prune("--nsamples", "4096", "--seqlen", "64", calibration=False)), 2,
        "calibration on 4096 x 64 tokens (lockstep runner) would hold about", True),
    "prune two-pass still beyond memory": (
        lambda c: _memory(c, GB, c.prune("--nsamples", "10000000", "--seqlen", "64", "--runner", "two-pass",
                                         calibration=False)), 2, "lower --nsamples or --seqlen", True),
    "prune lock-step threads": (lambda c: c.prune("--nsamples", "100000", "--seqlen", "16", "--chunk-size", "1",
                                                      calibration=False), 2,
                                "the lock-step runner runs one thread per chunk (at most 4096)", True),
    "structured --nsamples 1e9": (lambda c: _memory(c, 8 * GB, c.prune("--structure", "mlp", "--sparsity", "0.2",
                                                                      "--nsamples", "1000000000", "--seqlen", "16",
                                                                      calibration=False)),
                                  2, "lower --nsamples", True),
    "delta wanda --nsamples 1e9": (lambda c: _memory(c, 8 * GB, _delta(c, c.model, "--method", "wanda",
                                                                       "--nsamples", "1000000000", "--seqlen", "16")), 2,
                                   "lower --nsamples", True),
    "vocab text larger than memory": (lambda c: _memory(c, 10**6, ["vocab", "--model", str(c.model), "--out",
                                                                    str(c.out), "--quiet", "--text",
                                                                    str(c.write("big.txt", "word " * 40_000))]), 2,
                                      "tokenizing the whole of", True),
    "train --width 1000000": (lambda c: _no_threads(c, _train("--width", "1000000")), 2,
                              "training the cnn of 18,012,556,001,418 parameters", True),
    "train resnet --depth 600000002": (lambda c: _train("--model", "resnet", "--depth", "600000002"), 2,
                                       "lower --width, --depth or --batch-size", True),
    "train --threads 100000": (lambda c: _no_threads(c, _train("--threads", "100000")), 2,
                               "--threads must be an integer from 1 to", True),
    "demo --threads 100000": (lambda c: _no_threads(c, ["demo", "--threads", "100000", "--out", str(c.out)]), 2,
                              "--threads must be an integer from 1 to", True),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_value_is_one_line_exit_2_and_writes_nothing(row, tiny_source, tmp_path, monkeypatch,  # noqa: F811
                                                         capsys):
    setup, expected_code, fragment, early = ROWS[row]
    model = tmp_path / "models" / "m"
    shutil.copytree(tiny_source, model, copy_function=os.link)
    argv = setup(Ctx(tmp_path, model, monkeypatch, model))
    check_row(argv, expected_code, fragment, early, tmp_path, monkeypatch, capsys)
