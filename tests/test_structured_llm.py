"""Structured pruning of decoder LLMs: coupled groups, physical removal, rounding, round trips, errors."""

import pytest
import torch

import prunekit
from prunekit.core.errors import PrunekitError
from prunekit.core.registry import CRITERIA
from prunekit.core.io import read_manifest, save_pretrained
from prunekit.core.families import adapter_for, family_for, weight_view
from prunekit.models import load_model
from prunekit.structured import find_groups, prune_structured
from tests.conftest import FAMILIES, tiny_model, tiny_windows

IDS = tiny_windows(2, 16, seed=5)


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def zero_units(group, units):
    """Zero every weight and producer bias a unit owns: the unit then contributes nothing."""
    with torch.no_grad():
        for _, module, rows in group.producers:
            weight_view(module)[rows[units].reshape(-1)] = 0.0
            if module.bias is not None:
                module.bias[rows[units].reshape(-1)] = 0.0
        _, module, cols = group.consumer
        weight_view(module)[:, cols[units].reshape(-1)] = 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_zero_channels_and_heads_keeps_outputs(family):
    """Zero 16 MLP channels and one attention unit per block; magnitude pruning must find exactly
    those, and the physically smaller model computes the same logits."""
    model = tiny_model(family)
    adapter = adapter_for(model)
    for g in find_groups(adapter, ("mlp", "heads")):
        zero_units(g, torch.arange(3, 3 + 16) if g.kind == "mlp" else torch.tensor([g.n_units - 1]))
    before = logits(model)
    units_before = [g.n_units for g in find_groups(adapter, ("heads",))]
    params = sum(p.numel() for p in model.parameters())
    width = find_groups(adapter, ("mlp",))[0].n_units
    prune_structured(model, method="magnitude", structure="mlp", ratio=16 / width, allocation="uniform", round_to=1)
    if units_before[0] == 1:  # one key/value head (Gemma 3): the attention is one unit, kept by its block
        with pytest.raises(PrunekitError, match="one key/value head per block, so each attention is a single unit"):
            prune_structured(model, method="magnitude", structure="heads", ratio=0.5, allocation="uniform")
        expected_units = units_before
    else:
        prune_structured(model, method="magnitude", structure="heads", ratio=1 / units_before[0], allocation="uniform")
        expected_units = [n - 1 for n in units_before]
    torch.testing.assert_close(logits(model), before, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < params
    assert [g.n_units for g in find_groups(adapter, ("mlp",))] == [width - 16] * 2
    assert [g.n_units for g in find_groups(adapter, ("heads",))] == expected_units


def test_gqa_removes_a_kv_head_with_all_its_query_heads():
    """Llama with 4 query / 2 kv heads: unit 0 = kv head 0 + query heads 0,1. Zeroing query head 0
    alone makes the unit weak; removing it must drop kv head 0 and query heads 0-1 together."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    attn = adapter.blocks[0].self_attn
    hd = attn.head_dim
    q_keep = attn.q_proj.weight[2 * hd :].clone()
    k_keep = attn.k_proj.weight[hd:].clone()
    o_keep = attn.o_proj.weight[:, 2 * hd :].clone()
    with torch.no_grad():
        for i in range(2):
            find_groups(adapter, ("heads",))[i]  # groups exist per block
        attn.q_proj.weight[: 2 * hd] *= 1e-3
        attn.k_proj.weight[:hd] *= 1e-3
        attn.v_proj.weight[:hd] *= 1e-3
        attn.o_proj.weight[:, : 2 * hd] *= 1e-3
    prune_structured(model, method="magnitude", structure="heads", ratio=0.5, allocation="uniform")
    assert adapter.attention_counts(0) == (2, 1, hd)
    assert torch.equal(attn.q_proj.weight, q_keep) and torch.equal(attn.k_proj.weight, k_keep)
    assert torch.equal(attn.o_proj.weight, o_keep)
    for i in range(2):
        n_q, n_kv, _ = adapter.attention_counts(i)
        assert n_q % n_kv == 0 and n_q // n_kv == 2  # the sharing ratio is unchanged in every block
    assert logits(model).isfinite().all()


@pytest.mark.parametrize("method", CRITERIA.names())
@pytest.mark.parametrize("round_to", [8, 16])
def test_kept_widths_obey_rounding_and_budget(method, round_to):
    model = tiny_model("llama")
    result = prune_structured(model, method=method, structure=("mlp", "heads"), ratio=0.3, round_to=round_to,
                              calibration=tiny_windows(), nsamples=8, seqlen=32, allocation="global")
    assert all(w % round_to == 0 and round_to <= w <= 128 for w in result.mlp_widths)
    assert all(h % 2 == 0 and h >= 2 for h in result.heads)  # whole kv groups of 2 query heads
    assert 0.2 < result.removed_fraction < 0.4
    assert result.parameters_after == sum(p.numel() for p in model.parameters())
    assert logits(model).isfinite().all()


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_prune_reloads_with_plain_from_pretrained(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    # heads only where the config states head_dim (else it is hidden / heads and pruned heads need layer_shapes)
    structure = ("mlp", "heads") if family_for(model).attention.head_dim_key else ("mlp",)
    result = prune_structured(model, method="magnitude", structure=structure, ratio=0.25, allocation="uniform")
    assert result.layer_shapes == {}  # the config describes every block
    out = save_pretrained(model, tmp_path / "pruned", manifest={"structured": result.to_dict()})
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert sum(p.numel() for p in reloaded.parameters()) == result.parameters_after
    assert torch.equal(logits(model), logits(reloaded))


@pytest.mark.parametrize("family", FAMILIES)
def test_per_layer_widths_and_added_biases_reload_with_load_pretrained(family, tmp_path):
    model = tiny_model(family)
    result = prune_structured(model, method="flap", structure=("mlp", "heads"), ratio=0.4, round_to=8,
                              calibration=tiny_windows(), nsamples=8, seqlen=32, allocation="blocks")
    # the tiny blocks come out equally wide: Llama's bias flags then describe the added biases (a plain folder)
    assert bool(result.layer_shapes) == (family != "llama"), "added biases without a bias flag need layer_shapes"
    out = save_pretrained(model, tmp_path / "pruned", manifest={"layer_shapes": result.layer_shapes})
    assert read_manifest(out)["layer_shapes"] == result.layer_shapes
    for reloaded in (prunekit.load_pretrained(out), load_model(out)):
        assert sum(p.numel() for p in reloaded.parameters()) == result.parameters_after
        assert torch.equal(logits(model), logits(reloaded))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_depth_pruning_removes_blocks_and_reloads(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    result = prune_structured(model, method="flap", structure="blocks", remove=1, calibration=tiny_windows(),
                              nsamples=4, seqlen=32)
    assert len(result.removed_blocks) == 1 and len(adapter_for(model).blocks) == 1
    assert model.config.num_hidden_layers == 1
    out = save_pretrained(model, tmp_path / "d")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(model), logits(reloaded))
    with torch.no_grad():  # the KV cache is indexed by the renumbered blocks
        gen = model.generate(IDS[:1], max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, IDS.shape[1] + 4)


def test_flap_bias_compensation_makes_removing_constant_channels_exact():
    """OPT channels whose fc1 row is zero and bias 1 output relu(1) = 1 for every token: variance 0,
    so FLAP removes exactly them, and folding W[:, j] * mean(x_j) into fc2's bias (FLAP eq. 6) keeps
    the logits, while plain removal does not."""
    outs = {}
    for compensate in (True, False):
        model = tiny_model("opt")
        with torch.no_grad():
            for layer in model.model.decoder.layers:
                layer.fc1.weight[:32] = 0.0
                layer.fc1.bias[:32] = 1.0
        with torch.no_grad():  # measured on the calibration tokens: channels dead there are exact too
            before = model(tiny_windows()).logits
            result = prune_structured(model, method="flap", structure="mlp", ratio=0.25, allocation="uniform",
                                      bias_compensation=compensate, calibration=tiny_windows(), nsamples=8,
                                      seqlen=32)
            outs[compensate] = (model(tiny_windows()).logits - before).abs().max()
        assert result.mlp_widths == [96, 96]
    assert outs[True] < 1e-5
    assert outs[False] > 1e-2


@pytest.mark.parametrize("kwargs, match", [
    ({"structure": "mlp", "ratio": 1.0}, "ratio 1.0"),
    ({"structure": "mlp", "ratio": -0.1}, "ratio -0.1"),
    ({"structure": "filters", "ratio": 0.2}, "structure 'filters'.*mlp, heads, blocks"),
    ({"structure": "heads", "ratio": 0.9, "allocation": "uniform"}, "every attention head"),
    ({"structure": "mlp", "ratio": 0.2, "method": "sparsegpt"}, "structured criterion 'sparsegpt'.*flap"),
    ({"structure": "mlp", "ratio": 0.2, "method": "cfsp", "beta": -1}, r"beta \(structured criterion 'cfsp'\)"),
    ({"structure": "mlp", "ratio": 0.2, "method": "cfsp", "bta": 1}, "unknown option 'bta'.*'beta'"),
    ({"structure": "blocks", "remove": 2}, "remove 2 blocks"),
    ({"structure": "mlp", "ratio": 0.2, "allocation": "owl"}, "allocation 'owl'"),
])
def test_bad_requests_are_one_line_value_errors(kwargs, match):
    model = tiny_model("llama")
    params = [p.clone() for p in model.parameters()]
    kwargs = {"method": "magnitude", **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        prune_structured(model, **kwargs)
    assert "\n" not in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))  # nothing changed
