"""The streaming prune (``prunekit.prune_pretrained``, the default of ``prunekit prune`` on a folder):
the same masks as the in-memory ``prunekit.prune``, an output plain transformers loads, one block in
memory at a time, sharded inputs and outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import prunekit
from prunekit.core.allocation import Global, lowest_counts, lowest_counts_streamed
from prunekit.core.errors import PrunekitError
from prunekit.core.recipe import CalibrationConfig, Recipe
from prunekit.core.registry import METHODS
from prunekit.oneshot.step import PruneStep
from tests.conftest import FAMILIES, tiny_config, tiny_windows

STREAMED = [m for m in METHODS.names() if "gradients" not in METHODS.get(m).needs]
CASES = [(m, "uniform", p) for m in STREAMED for p in ("unstructured", "per-row", "2:4")]
CASES += [(m, "global", p) for m in STREAMED for p in ("unstructured", "per-row")]
CASES += [(m, "owl", "per-row") for m in ("wanda", "sparsegpt")]


def recipe(method, allocation="uniform", pattern="unstructured", **kw):
    sparsity = None if pattern == "2:4" else kw.pop("sparsity", 0.6)
    step = PruneStep(method=method, allocation=allocation, pattern=pattern, sparsity=sparsity, **kw)
    return Recipe([step], CalibrationConfig(nsamples=8, seqlen=32, chunk_size=3))


def save_tiny(folder, family="llama", tied=False, shard=None, seed=0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family)
    config.tie_word_embeddings = tied
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    return folder


def load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def both(folder, out, rec, family_tokenizer=None):
    """(in-memory model after prunekit.prune, its result, the streamed output loaded, its result)."""
    model = load(folder)
    memory = prunekit.prune(model, rec, calibration=tiny_windows(), progress=False)
    streamed = prunekit.prune_pretrained(folder, out, rec, calibration=tiny_windows(), tokenizer=_NoTokenizer(),
                                         progress=False)
    return model, memory, load(out), streamed


class _NoTokenizer:
    """The tiny models have no tokenizer; calibration comes as token ids."""

    def save_pretrained(self, folder):
        pass


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def sharded_llama(tmp_path_factory):
    """A tiny Llama in 10 shards with an index (max_shard_size 50 kB), embeddings tied."""
    return save_tiny(tmp_path_factory.mktemp("sharded") / "llama", tied=True, shard="50KB")


@pytest.mark.parametrize("method,allocation,pattern", CASES)
def test_streamed_and_in_memory_prunes_give_the_same_masks(method, allocation, pattern, sharded_llama, tmp_path):
    rec = recipe(method, allocation, pattern)
    memory_model, memory, streamed_model, streamed = both(sharded_llama, tmp_path / "out", rec)
    assert same_weights(memory_model, streamed_model)  # same masks, same updated weights (SparseGPT)
    assert [(r.name, r.target, r.sparsity) for r in memory.layers] == [
        (r.name, r.target, r.sparsity) for r in streamed.layers]
    assert (memory.parameters, memory.targeted, memory.zeros) == (streamed.parameters, streamed.targeted,
                                                                   streamed.zeros)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_streams_to_a_folder_plain_transformers_loads_with_the_same_logits(family, tmp_path):
    folder = save_tiny(tmp_path / "in", family, tied=family in ("gpt2", "opt"))
    memory_model, _, streamed_model, _ = both(folder, tmp_path / "out", recipe("sparsegpt", pattern="2:4"))
    ids = tiny_windows(2, 16, seed=5)
    with torch.no_grad():
        assert torch.equal(memory_model(ids).logits, streamed_model(ids).logits)
    assert same_weights(memory_model, streamed_model)


def test_a_sharded_input_gives_a_sharded_output_one_block_per_shard(sharded_llama, tmp_path):
    out = tmp_path / "out"
    result = prunekit.prune_pretrained(sharded_llama, out, recipe("wanda"), calibration=tiny_windows(),
                                       tokenizer=_NoTokenizer(), progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == sorted(set(index["weight_map"].values())) and len(shards) == 3  # 2 blocks + the rest
    assert all(shard.startswith("model-") and shard.endswith("-of-00003.safetensors") for shard in shards)
    assert "lm_head.weight" not in index["weight_map"]  # tied to the embeddings, saved once as the input has it
    first = load_file(out / index["weight_map"]["model.layers.0.mlp.down_proj.weight"])
    assert all(key.startswith("model.layers.0.") for key in first)
    manifest = json.loads((out / "prunekit.json").read_text())
    assert manifest["steps"][0]["method"] == "wanda" and "stream:read_s" in manifest["result"]["timings"]
    assert result.sparsity == pytest.approx(0.6, abs=1e-3)


def test_only_one_block_is_in_memory_at_a_time(sharded_llama, tmp_path, monkeypatch):
    """While a layer is pruned, every other block's weights are on the meta device (no memory)."""
    from prunekit.core import shards

    seen = []
    real = shards.StreamedBlocks.block

    def watch(self, index, module):
        model = self.weights.model
        for i, block in enumerate(model.model.layers):
            if i != index:
                seen.append(all(p.device.type == "meta" for p in block.parameters()))
        seen.append(model.lm_head.weight.device.type == "meta")
        seen.append(model.model.embed_tokens.weight.device.type == "meta")  # needed for the capture only
        return real(self, index, module)

    monkeypatch.setattr(shards.StreamedBlocks, "block", watch)
    prunekit.prune_pretrained(sharded_llama, tmp_path / "out", recipe("wanda"), calibration=tiny_windows(),
                              tokenizer=_NoTokenizer(), progress=False)
    assert seen and all(seen)


def test_gblm_and_several_steps_do_not_stream(sharded_llama, tmp_path):
    from prunekit.oneshot.prune import stream_plan

    gblm = recipe("gblm", pattern="per-row")
    assert stream_plan(gblm, sharded_llama) == (None, "gblm needs gradients of the whole model")
    two = Recipe([PruneStep(method="magnitude", sparsity=0.3), PruneStep(method="wanda", sparsity=0.5)])
    assert stream_plan(two, sharded_llama)[1] == "a recipe of 2 steps is pruned in memory"
    assert stream_plan(gblm, sharded_llama, stream=False) == (None, None)
    with pytest.raises(PrunekitError, match="gblm needs gradients of the whole model; prune it in memory"):
        prunekit.prune_pretrained(sharded_llama, tmp_path / "out", gblm, calibration=tiny_windows())
    assert not (tmp_path / "out").exists()


def test_a_folder_whose_shapes_differ_from_its_config_is_pruned_in_memory(tmp_path):
    from prunekit.oneshot.prune import stream_plan

    folder = save_tiny(tmp_path / "in")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 96  # the weights keep 128 channels
    (folder / "config.json").write_text(json.dumps(config))
    folder_, why = stream_plan(recipe("wanda"), folder)
    assert folder_ is None and "do not have the shapes config.json describes" in why


@pytest.mark.parametrize("seed", range(4))
def test_global_counts_from_layers_read_one_at_a_time_equal_the_in_memory_counts(seed):
    gen = torch.Generator().manual_seed(seed)
    layers = {f"l{i}": torch.randn(int(torch.randint(5, 300, (1,), generator=gen)), generator=gen) for i in range(6)}
    layers["l1"] = layers["l1"].round()  # many ties at the threshold, spread over layers
    layers["l3"] = torch.zeros(40)  # -0.0 and 0.0
    layers["l3"][::2] = -0.0
    layers["l4"] = layers["l4"].abs()
    total = sum(t.numel() for t in layers.values())
    for k in (0, 1, total // 3, total // 2, total - 1, total):
        assert lowest_counts_streamed(lambda: iter(layers.items()), k) == lowest_counts(layers, k)
    caps = {n: t.numel() // 2 for n, t in layers.items()}
    k = sum(caps.values()) // 2
    assert lowest_counts_streamed(lambda: iter(layers.items()), k, caps) == lowest_counts(layers, k, caps)
    floor = Global(floor=0.2)
    sizes = {n: t.numel() for n, t in layers.items()}
    assert floor.counts_streamed(lambda: iter(layers.items()), sizes, 0.5) == floor.counts(layers, 0.5)


def test_cli_streams_by_default_and_no_stream_gives_the_same_weights(tmp_path, smollm2_tokenizer, capsys):
    """`prunekit prune` on a folder streams (one shard per block); --no-stream loads the model; same tensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from prunekit.cli import main

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True)
    folder = tmp_path / "in"
    LlamaForCausalLM(config).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    args = ["prune", "--model", folder, "--method", "sparsegpt", "--sparsity", "0.5", "--nsamples", "4", "--seqlen",
            "32", "--calibration", "brown:r", "--quiet"]
    assert main([str(a) for a in [*args, "--out", tmp_path / "streamed"]]) == 0
    assert main([str(a) for a in [*args, "--out", tmp_path / "memory", "--no-stream"]]) == 0
    streamed = {k: v for f in (tmp_path / "streamed").glob("model-*.safetensors") for k, v in load_file(f).items()}
    memory = load_file(tmp_path / "memory" / "model.safetensors")
    assert streamed.keys() == memory.keys() and all(torch.equal(streamed[k], memory[k]) for k in memory)
    assert (tmp_path / "streamed" / "tokenizer.json").is_file()
    loaded = load(tmp_path / "streamed")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["lockstep", "dense"])
def test_smollm2_streamed_and_in_memory_wanda_give_the_same_weights(smollm2_path, smollm2_tokenizer, tmp_path, runner):
    """The real SmolLM2-135M (tied embeddings, 30 blocks), Wanda 50% on a few windows: the streamed output
    holds exactly the in-memory prune's tensors and loads with plain from_pretrained."""
    from prunekit.models import load_model

    rec = Recipe([PruneStep(method="wanda", sparsity=0.5)], CalibrationConfig(nsamples=4, seqlen=128, runner=runner))
    model = load_model(smollm2_path)
    memory = prunekit.prune(model, rec, tokenizer=smollm2_tokenizer, progress=False)
    streamed = prunekit.prune_pretrained(smollm2_path, tmp_path / "out", rec, tokenizer=smollm2_tokenizer,
                                         progress=False)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"]
    for block in range(30):  # one shard per block
        assert len({f for k, f in index.items() if k.startswith(f"model.layers.{block}.")}) == 1
    assert len(set(index.values())) == 32  # 30 blocks, the embeddings (larger than a block) alone, the final norm
    assert same_weights(model, load(tmp_path / "out"))
    assert [(r.name, r.sparsity) for r in memory.layers] == [(r.name, r.sparsity) for r in streamed.layers]


def test_ready_made_windows_are_checked_by_their_own_length_not_the_recipe_seqlen(sharded_llama, tmp_path):
    """Token-id windows given directly carry their length: the recipe's seqlen (longer than the model's
    positions here) is not what runs, so it is not what is checked; windows too long still are."""
    from transformers import AutoConfig

    limit = AutoConfig.from_pretrained(sharded_llama).max_position_embeddings
    rec = Recipe([PruneStep(method="wanda", sparsity=0.5)], CalibrationConfig(nsamples=4, seqlen=limit + 1))
    windows = tiny_windows()[:4]
    assert windows.shape[1] <= limit
    result = prunekit.prune_pretrained(sharded_llama, tmp_path / "out", rec, calibration=windows,
                                       tokenizer=_NoTokenizer(), progress=False)
    assert result.sparsity == pytest.approx(0.5, abs=0.01)
    too_long = torch.zeros(2, limit + 1, dtype=torch.long)
    with pytest.raises(PrunekitError, match=f"calibration seqlen {limit + 1} is longer"):
        prunekit.prune_pretrained(sharded_llama, tmp_path / "out2", rec, calibration=too_long,
                                  tokenizer=_NoTokenizer(), progress=False)
