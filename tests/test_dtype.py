"""Dtypes (issue 10): load, compute and save in the checkpoint's dtype or the one asked for;
statistics and Hessians accumulate in float32; the report says where the blocks ran."""

import json

import pytest
import torch

import prunekit
from prunekit.cli import main
from prunekit.core.families import adapter_for, weight_view
from prunekit.core.recipe import CalibrationConfig, Recipe
from prunekit.core.registry import METHODS
from prunekit.models.loading import check_dtype, checkpoint_dtype, load_model, resolve_dtype
from prunekit.oneshot.step import PruneStep
from tests.conftest import tiny_model, tiny_windows


def recipe(method, **kw):
    return Recipe([PruneStep(method=method, **kw)], CalibrationConfig(nsamples=8, seqlen=32, chunk_size=3))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, smollm2_tokenizer):
    """A tiny random Llama saved in float32 with SmolLM2's tokenizer (the CLI needs one)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def test_dtype_names():
    assert [check_dtype(x) for x in (None, "auto", "BF16", "fp16", "float", torch.bfloat16)] == \
        ["auto", "auto", "bfloat16", "float16", "float32", "bfloat16"]
    with pytest.raises(ValueError, match=r"unknown dtype 'int8' \(choices: auto, bfloat16, float16, float32\)"):
        check_dtype("int8")


def test_auto_is_the_checkpoint_dtype():
    from transformers import LlamaConfig

    assert checkpoint_dtype(LlamaConfig(dtype="bfloat16")) == torch.bfloat16
    assert checkpoint_dtype(LlamaConfig()) == torch.float32  # none declared
    assert checkpoint_dtype(LlamaConfig(dtype="float64")) == torch.float32  # not one prunekit computes in
    assert resolve_dtype("auto", LlamaConfig(dtype="float16")) == torch.float16
    assert resolve_dtype("float32", LlamaConfig(dtype="float16")) == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_runs_in_half_precision_with_fp32_statistics(method, dtype, monkeypatch):
    from prunekit.core import stats as stats_module

    seen = []
    add = stats_module.LayerStats.add

    def spy(self, x, samples):
        add(self, x, samples)
        seen.append((x.dtype, self.sq_norms.dtype, None if self.gram_upper is None else self.gram_upper.dtype))

    monkeypatch.setattr(stats_module.LayerStats, "add", spy)
    model = tiny_model("llama").to(dtype)
    result = prunekit.prune(model, recipe(method, sparsity=0.5, pattern="per-row"), calibration=tiny_windows(),
                            progress=False)
    assert result.dtype == str(dtype).removeprefix("torch.") and result.device == "cpu"
    assert result.peak_device_mb is None  # not on a CUDA device
    for r in result.layers:
        assert r.sparsity == pytest.approx(0.5)
    assert all(p.dtype == dtype for p in model.parameters())
    # activations in the model's dtype (SparseGPT: float32, the auto compute dtype), statistics in float32
    compute = torch.float32 if METHODS.get(method).updates_weights else dtype
    for x_dtype, norms, gram in seen:
        assert x_dtype == compute and norms == torch.float32 and gram in (None, torch.float32)


def test_auto_compute_dtype_is_float32_only_for_reconstruction_on_16_bit_weights():
    from prunekit.core.calibration import resolve_compute_dtype

    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    assert [resolve_compute_dtype("auto", s, True) for s in (bf16, fp16, fp32)] == [fp32, fp32, None]
    assert [resolve_compute_dtype("auto", s, False) for s in (bf16, fp16, fp32)] == [None, None, None]
    assert resolve_compute_dtype("bfloat16", bf16, True) is None  # the weights' own: nothing to cast
    assert resolve_compute_dtype("float32", bf16, False) == fp32
    with pytest.raises(ValueError, match="compute dtype 'int8' is unknown"):
        resolve_compute_dtype("int8", bf16, True)
    with pytest.raises(Exception, match="compute_dtype"):
        CalibrationConfig(compute_dtype="double")


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
@pytest.mark.parametrize("runner", ["lockstep", "two-pass"])
def test_bf16_weights_computed_in_float32_equal_a_float32_prune_rounded_once(method, runner):
    """compute_dtype float32 on a bf16 model = the same model upcast, pruned in float32, cast back."""
    rec = Recipe([PruneStep(method=method, sparsity=0.5)],
                 CalibrationConfig(nsamples=8, seqlen=32, chunk_size=3, runner=runner, compute_dtype="float32"))
    ours = tiny_model("llama").to(torch.bfloat16)
    reference = tiny_model("llama").to(torch.bfloat16).float()
    prunekit.prune(ours, rec, calibration=tiny_windows(), progress=False)
    prunekit.prune(reference, rec, calibration=tiny_windows(), progress=False)
    reference = reference.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_streamed_bf16_with_float32_compute_equals_in_memory(tmp_path):
    from tests.test_streaming import _NoTokenizer, load, same_weights, save_tiny

    folder = save_tiny(tmp_path / "tiny")
    load(folder).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    rec = Recipe([PruneStep(method="sparsegpt", sparsity=0.5)], CalibrationConfig(nsamples=8, seqlen=32, chunk_size=3))
    model = load(tmp_path / "bf16")
    assert model.dtype == torch.bfloat16
    prunekit.prune(model, rec, calibration=tiny_windows(), progress=False)  # auto: float32 compute
    prunekit.prune_pretrained(tmp_path / "bf16", tmp_path / "out", rec, calibration=tiny_windows(),
                              tokenizer=_NoTokenizer(), progress=False)
    assert same_weights(model, load(tmp_path / "out"))


def test_bf16_masks_agree_with_fp32_masks():
    """The same model in bf16 and fp32: Wanda's masks agree on almost every weight."""
    a, b = tiny_model("llama"), tiny_model("llama").to(torch.bfloat16)
    for m in (a, b):
        prunekit.prune(m, recipe("wanda", sparsity=0.5), calibration=tiny_windows(), progress=False)
    for (name, ma), mb in zip(adapter_for(a).linears(1).items(), adapter_for(b).linears(1).values()):
        agree = ((weight_view(ma) == 0) == (weight_view(mb) == 0)).float().mean().item()
        assert agree > 0.95, name


def _prune(folder, out, *extra):
    return main(["prune", "--model", str(folder), "--out", str(out), "--quiet", "--calibration", "brown:r",
                 "--nsamples", "2", "--seqlen", "16", "--json", *map(str, extra)])


def _weights_bytes(folder):
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_cli_bf16_output_is_bf16_and_half_the_size(tiny_folder, tmp_path, capsys, stream):
    assert _prune(tiny_folder, tmp_path / "fp32", stream) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert _prune(tiny_folder, tmp_path / "bf16", stream, "--dtype", "bfloat16") == 0
    bf16 = json.loads(capsys.readouterr().out)
    assert (fp32["dtype"], bf16["dtype"]) == ("float32", "bfloat16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert _weights_bytes(tmp_path / "bf16") == pytest.approx(_weights_bytes(tmp_path / "fp32") / 2, rel=0.01)
    assert json.loads((tmp_path / "bf16" / "prunekit.json").read_text())["result"]["dtype"] == "bfloat16"
    # auto keeps the input's dtype: the bf16 output pruned again stays bf16
    assert _prune(tmp_path / "bf16", tmp_path / "again", stream) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "bfloat16"
    model = load_model(tmp_path / "again")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_cli_structured_and_eval_take_dtype(tiny_folder, tmp_path, capsys):
    out = tmp_path / "structured"
    code = main(["prune", "--model", str(tiny_folder), "--out", str(out), "--quiet", "--structure", "mlp",
                 "--sparsity", "0.25", "--calibration", "brown:r", "--nsamples", "2", "--seqlen", "16",
                 "--dtype", "bfloat16", "--option", "receipt=false"])
    assert code == 0, capsys.readouterr().err
    assert next(load_model(out).parameters()).dtype == torch.bfloat16
    capsys.readouterr()  # --quiet still prints the prune's result line
    assert main(["eval", "--model", str(out), "--text", "brown:r", "--nwindows", "1", "--seqlen", "16", "--json",
                 "--dtype", "float32"]) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"] > 1


def test_peak_device_memory_is_read_on_cuda_only(monkeypatch):
    from prunekit.core.memory import peak_device_mb

    assert peak_device_mb(None) is None and peak_device_mb("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 << 20)
    assert peak_device_mb("cuda:0") == 3.0 and peak_device_mb("meta") is None
