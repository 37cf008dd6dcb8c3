"""Defaults that do no harm (issue 19): the training pruner targets what one-shot targets, adopts the
zeros of a pruned model, PERP finds every norm, remask undoes a merge that revived pruned weights,
load_pretrained keeps the checkpoint's dtype, and a method without calibration ignores seqlen."""

import pytest
import torch
from torch import nn

import prunekit
from prunekit.core.errors import PrunekitError
from prunekit.training.pruner import Pruner, default_layers, prune_once, remask
from prunekit.training.recovery import CausalLMLoss, is_norm, perp_parameters, perp_recover
from prunekit.training.schedules import ConstantSparsity, OneShotSparsity
from tests.conftest import tiny_model, tiny_windows


def tied_llama(positions: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


BLOCK_LINEARS = {f"model.layers.{i}.{p}" for i in range(2)
                 for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}


# ------------------------------------------------------------------ 1. what the pruner targets


def test_pruner_on_a_tied_lm_targets_the_block_linears_and_never_the_embedding():
    model = tied_llama()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    pruner = prune_once(model, 0.5)
    assert set(pruner.weights) == BLOCK_LINEARS  # what one-shot targets: no lm_head, no embedding
    assert int((model.model.embed_tokens.weight == 0).sum()) == 0
    assert pruner.sparsity() == pytest.approx(0.5, abs=0.01)
    explicit = Pruner(tied_llama(), ConstantSparsity(0.5), targets=["lm_head"])  # asked for by name: allowed
    assert list(explicit.weights) == ["lm_head"]


def test_pruner_on_gpt2_finds_its_transposed_block_layers():
    model = tiny_model("gpt2")
    pruner = prune_once(model, 0.5)
    assert set(pruner.weights) == {f"transformer.h.{i}.{p}" for i in range(2)
                                   for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert int((model.transformer.wte.weight == 0).sum()) == 0


class TiedClassifier(nn.Module):
    """Not a Hugging Face model: an embedding, a body and an output layer sharing the embedding's weight."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.body = nn.Linear(8, 8)
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.embed.weight


class DeclaredHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def get_output_embeddings(self):
        return self.head


def test_other_models_skip_embedding_tied_layers_and_a_declared_head():
    assert list(default_layers(TiedClassifier())) == ["body"]
    assert list(default_layers(DeclaredHead())) == ["body.0", "body.2"]
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 5))  # no declared head: all of it
    assert list(default_layers(cnn)) == ["0", "2"]


# ------------------------------------------------------------------ 2. Pruner.from_zeros


def test_from_zeros_holds_the_masks_of_a_one_shot_pruned_model_while_training():
    model = tiny_model("llama")
    prunekit.prune(model, method="magnitude", sparsity=0.5, progress=False)
    zeros = {n: model.get_submodule(n).weight == 0 for n in BLOCK_LINEARS}
    pruner = Pruner.from_zeros(model)
    assert set(pruner.masks) == BLOCK_LINEARS
    assert all(torch.equal(pruner.masks[n], zeros[n]) for n in zeros)
    assert pruner.target == pytest.approx(0.5, abs=0.01)
    from prunekit.core.train import TrainConfig, train

    ids = tiny_windows(8, 16)
    train(model, (ids, None), TrainConfig(steps=4, batch_size=4, optimizer="adamw", lr=1e-2, weight_decay=0.1),
          [CausalLMLoss(), pruner])
    for name in zeros:
        weight = model.get_submodule(name).weight
        assert torch.all(weight[zeros[name]] == 0), name
        assert torch.equal(pruner.masks[name], zeros[name]), name  # a constant schedule changes no mask
    assert pruner.sparsity() == pytest.approx(pruner.target, abs=1e-3)


def test_from_zeros_with_a_rising_schedule_prunes_further_from_the_adopted_masks():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    prune_once(model, 0.5).remove()
    before = {n: model.get_submodule(n).weight == 0 for n in ("0", "2")}
    pruner = Pruner.from_zeros(model, OneShotSparsity(0.75, at=1))
    assert pruner.target == pytest.approx(0.5)
    assert pruner.step(0) is True  # OneShotSparsity is 0 before step 1: a change, yet pruned weights stay pruned
    pruner.step(1)
    for name, mask in before.items():
        assert torch.all(pruner.masks[name][mask]), name
    assert pruner.sparsity() == pytest.approx(0.75)


# ------------------------------------------------------------------ 3. PERP finds every norm


def test_norms_are_found_by_role():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    assert is_norm(LlamaRMSNorm(8)) and is_norm(nn.LayerNorm(8)) and is_norm(nn.BatchNorm2d(3))
    assert not is_norm(nn.Linear(4, 4)) and not is_norm(nn.Embedding(4, 4))

    class NormHead(nn.Linear):  # a 2-D weight: never a norm, whatever its name
        pass

    assert not is_norm(NormHead(4, 4))


def test_perp_trains_the_rmsnorms_of_a_llama_without_biases():
    model = tied_llama()
    pruner = prune_once(model, 0.5)
    norms = [m for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"]
    assert len(norms) == 2 * 2 + 1
    assert {id(p) for p in perp_parameters(model)} == {id(m.weight) for m in norms}
    weights = {n: w.detach().clone() for n, w in pruner.weights.items()}
    before = [m.weight.detach().clone() for m in norms]
    ids = tiny_windows(8, 16)
    perp_recover(model, pruner, ids, None, steps=3, batch_size=4, lr=1e-2, callbacks=[CausalLMLoss()])
    assert all(not torch.equal(m.weight, b) for m, b in zip(norms, before))
    assert all(torch.equal(w, weights[n]) for n, w in pruner.weights.items())
    with pytest.raises(PrunekitError, match="no bias, normalization or LoRA parameter"):
        perp_recover(nn.Sequential(nn.Linear(4, 2, bias=False)), prune_once(nn.Sequential(nn.Linear(4, 2, bias=False)),
                     0.5), torch.randn(4, 4), torch.zeros(4, dtype=torch.long))


@pytest.mark.slow
def test_perp_on_the_real_smollm2_trains_its_llama_rmsnorms(smollm2_path):
    model = prunekit.load_model(smollm2_path, dtype="float32")
    layers = model.config.num_hidden_layers
    norms = [m for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"]
    assert len(norms) == 2 * layers + 1
    embedding = model.model.embed_tokens.weight.detach().clone()  # tied to lm_head; holds a few zeros of its own
    pruner = prune_once(model, 0.5)
    assert "lm_head" not in pruner.weights and len(pruner.weights) == 7 * layers
    assert torch.equal(model.model.embed_tokens.weight, embedding)
    before = norms[-1].weight.detach().clone()
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    perp_recover(model, pruner, ids, None, steps=1, batch_size=2, lr=1e-3, callbacks=[CausalLMLoss()])
    assert not torch.equal(norms[-1].weight, before)
    assert pruner.sparsity() == pytest.approx(0.5, abs=0.01)


# ------------------------------------------------------------------ 4. remask after PEFT's merge


def test_remask_after_peft_merge_and_unload():
    peft = pytest.importorskip("peft")
    model = tied_llama()
    pruner = prune_once(model, 0.5)
    pruner.remove()
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"],
                             init_lora_weights=False)  # B random: the update B A is dense at once
    merged = peft.get_peft_model(model, config).merge_and_unload()
    revived = sum(int((merged.get_submodule(n).weight[m] != 0).sum()) for n, m in masks.items())
    assert revived > 0
    assert remask(merged, masks) == revived
    for name, mask in masks.items():
        assert torch.all(merged.get_submodule(name).weight[mask] == 0), name
    assert prunekit.remask(merged, pruner) == 0  # a Pruner gives its masks; nothing left to re-zero


def test_remask_names_a_bad_layer_or_shape():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(PrunekitError, match="no layer 'head'"):
        remask(model, {"head": torch.zeros(3, 4, dtype=torch.bool)})
    with pytest.raises(PrunekitError, match=r"mask of '0' is \(4, 3\) but its weight is \(3, 4\)"):
        remask(model, {"0": torch.zeros(4, 3, dtype=torch.bool)})


# ------------------------------------------------------------------ 5. load_pretrained keeps the dtype


def test_load_pretrained_keeps_a_bf16_checkpoint_and_passes_options(tmp_path):
    model = tiny_model("llama").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "m")
    loaded = prunekit.load_pretrained(tmp_path / "m")
    assert loaded.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    torch.testing.assert_close(loaded.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    assert prunekit.load_pretrained(tmp_path / "m", dtype=torch.float32).dtype == torch.float32
    assert prunekit.load_pretrained(tmp_path / "m", dtype="float16").dtype == torch.float16
    eager = prunekit.load_pretrained(tmp_path / "m", device_map="cpu", attn_implementation="eager")
    assert eager.config._attn_implementation == "eager" and eager.device.type == "cpu"
    with pytest.raises(PrunekitError, match="sets 'use_safetensors' itself"):
        prunekit.load_pretrained(tmp_path / "m", use_safetensors=False)
    with pytest.raises(PrunekitError, match="unknown dtype 'int8'"):
        prunekit.load_pretrained(tmp_path / "m", dtype="int8")


# ------------------------------------------------------------------ 6. no calibration, no seqlen check


def test_magnitude_prunes_a_model_with_fewer_positions_than_the_default_seqlen(tmp_path, smollm2_tokenizer, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    from prunekit.cli import main

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    smollm2_tokenizer.save_pretrained(tmp_path / "m")
    for stream in ([], ["--no-stream"]):
        out = tmp_path / f"out{len(stream)}"
        assert main(["prune", "--model", str(tmp_path / "m"), "--method", "magnitude", "--out", str(out),
                     "--quiet", *stream]) == 0, capsys.readouterr().err
        assert (out / "prunekit.json").is_file()
    code = main(["prune", "--model", str(tmp_path / "m"), "--method", "wanda", "--out", str(tmp_path / "w"),
                 "--quiet"])
    assert code == 2
    assert "calibration seqlen 512 is longer than the model's 128 positions" in capsys.readouterr().err
