"""The family table against tiny random models of every family it lists."""

import pytest
import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.families import (
    FAMILIES,
    SUPPORTED_FAMILIES,
    adapter_for,
    block_list_path,
    blocks,
    family_for,
    is_linear,
    is_transposed,
    linears,
    new_linear,
    set_weight,
    weight_view,
)
from prunekit.structured.graph import find_groups
from tests.conftest import DISCOVERED, tiny_model

GQA = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
LINEARS = {  # names in the block, in the order linears() gives them (module order)
    "llama": GQA, "mistral": GQA, "qwen2": GQA, "qwen3": GQA, "gemma3_text": GQA, "gemma3": GQA,
    "opt": ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "fc1", "fc2"],
    "gpt2": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    "gpt_neox": ["attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
}
TABLE = list(FAMILIES)


def test_every_family_in_the_table_has_a_test_row():
    assert sorted(LINEARS) == sorted(TABLE)
    assert len(SUPPORTED_FAMILIES) == len(TABLE)


@pytest.mark.parametrize("family", TABLE)
def test_family_for_and_blocks(family):
    model = tiny_model(family)
    assert family_for(model) is FAMILIES[family]
    assert len(blocks(model)) == FAMILIES[family].widths_config(model.config).num_hidden_layers
    assert blocks(model) is model.get_submodule(FAMILIES[family].blocks)


@pytest.mark.parametrize("family", TABLE)
def test_linears_are_the_expected_layers(family):
    model = tiny_model(family)
    block = blocks(model)[1]
    assert list(linears(block)) == LINEARS[family]
    prefix = f"{FAMILIES[family].blocks}.1."
    assert list(adapter_for(model).linears(1)) == [prefix + n for n in LINEARS[family]]


@pytest.mark.parametrize("family", TABLE)
def test_linears_run_in_module_order(family):
    """Module order is execution order, except OPT, which registers k and v before q."""
    model = tiny_model(family)
    layers = linears(blocks(model)[0])
    executed = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: executed.append(n) if n not in executed else None)
               for n, m in layers.items()]
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long))
    for h in handles:
        h.remove()
    expected = list(layers)
    if family == "opt":
        expected = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", *expected[3:]]
    assert executed == expected


@pytest.mark.parametrize("family", TABLE)
def test_weight_view_is_out_by_in_and_writes_through(family):
    model = tiny_model(family)
    x = torch.randn(3, FAMILIES[family].widths_config(model.config).hidden_size)
    for name, module in linears(blocks(model)[0]).items():
        assert is_linear(module)
        assert is_transposed(module) == (family == "gpt2"), name
        w = weight_view(module)
        assert w.data_ptr() == module.weight.data_ptr()
        if w.shape[1] == x.shape[1]:  # fed by the hidden state: check the product itself
            bias = module.bias if module.bias is not None else 0.0
            with torch.no_grad():
                torch.testing.assert_close(module(x), x @ w.t() + bias)
        with torch.no_grad():
            w[1, 2] = 7.0
        stored = module.weight[2, 1] if is_transposed(module) else module.weight[1, 2]
        assert stored.item() == 7.0, name


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_set_weight_and_new_linear_keep_the_layer_kind(family):
    model = tiny_model(family)
    module = linears(blocks(model)[0])[LINEARS[family][0]]
    out, inp = weight_view(module).shape
    smaller = weight_view(module)[: out // 2, : inp // 2].clone()
    with torch.no_grad():
        set_weight(module, smaller)
    assert torch.equal(weight_view(module), smaller) and module.weight.is_contiguous()
    fresh = new_linear(module, 5, 3, bias=False)
    assert type(fresh) is type(module) and weight_view(fresh).shape == (5, 3) and fresh.bias is None


@pytest.mark.parametrize("family", TABLE)
def test_attention_and_mlp_layout_match_the_config(family):
    model = tiny_model(family)
    fam = FAMILIES[family]
    cfg, lay = fam.widths_config(model.config), fam.attention
    n_q = getattr(cfg, lay.heads_key)
    n_kv = getattr(cfg, lay.kv_heads_key) if lay.kv_heads_key else n_q
    head_dim = (getattr(cfg, lay.head_dim_key, None) if lay.head_dim_key else None) or cfg.hidden_size // n_q
    adapter = adapter_for(model)
    for i, block in enumerate(blocks(model)):
        assert fam.attention_counts(block) == adapter.attention_counts(i) == (n_q, n_kv, head_dim)
        width = getattr(cfg, fam.mlp.width_key) or 4 * cfg.hidden_size  # GPT-2: n_inner None is 4 x n_embd
        assert fam.mlp_width(block) == width
        attn = fam.attention_module(block)
        for name in (*lay.producers, lay.out):
            assert is_linear(attn.get_submodule(name))
    heads = find_groups(adapter, ("heads",))
    assert [g.n_units for g in heads] == [n_kv] * cfg.num_hidden_layers  # one unit per kv group
    assert all(g.heads_per_unit == n_q // n_kv for g in heads)
    if family in ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3"):
        assert n_kv < n_q  # the tiny configs use grouped-query attention (Gemma 3: one kv head)


def test_head_count_is_set_where_the_module_keeps_one():
    model = tiny_model("gpt2")
    fam = family_for(model)
    attn = fam.attention_module(blocks(model)[0])
    fam.set_head_count(attn, 2, attn.head_dim)
    assert (attn.num_heads, attn.split_size, attn.embed_dim) == (2, 2 * attn.head_dim, 2 * attn.head_dim)


@pytest.mark.parametrize("family", DISCOVERED)
def test_decoders_outside_the_table_are_discovered(family):
    """Their blocks are the ModuleList of their _no_split_modules class; no attention/MLP layout."""
    model = tiny_model(family)
    assert model.config.model_type not in FAMILIES
    fam = family_for(model)
    assert fam.blocks == "model.layers" and not fam.structured and fam.attention is None
    assert blocks(model) is model.model.layers and len(blocks(model)) == 2
    names = set(linears(blocks(model)[0]))
    expected = {"phi3": {"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"}}
    assert names == expected.get(family, set(GQA))


def test_discovery_takes_the_longest_list_of_the_no_split_blocks():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

    class Other(Block):
        pass

    class Net(torch.nn.Module):
        _no_split_modules = ["Block"]

        def __init__(self):
            super().__init__()
            self.short = torch.nn.ModuleList([Block() for _ in range(2)])
            self.mixed = torch.nn.ModuleList([Block(), Other(), Block(), Block()])  # not all of the named class
            self.layers = torch.nn.ModuleList([Block() for _ in range(3)])

    assert block_list_path(Net()) == "layers"
    assert family_for(Net()).name == "Net (discovered)"
    Net._no_split_modules = None  # without the hint: the longest list of blocks of one class
    assert block_list_path(Net()) == "layers"


def test_discovery_looks_in_the_decoder_before_a_longer_vision_tower():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

    class Stack(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.layers = torch.nn.ModuleList([Block() for _ in range(n)])

    class Multimodal(torch.nn.Module):
        _no_split_modules = ["Block"]

        def __init__(self):
            super().__init__()
            self.vision = Stack(6)
            self.language_model = Stack(3)

        def get_decoder(self):
            return self.language_model

    assert block_list_path(Multimodal()) == "language_model.layers"
    Multimodal.get_decoder = lambda self: None  # no hint: the longest list
    assert block_list_path(Multimodal()) == "vision.layers"


def test_no_block_list_is_an_error_naming_what_was_looked_for():
    with pytest.raises(PrunekitError, match="Linear has no recognisable decoder block list"):
        family_for(torch.nn.Linear(2, 2))
    model = tiny_model("olmo2")
    model.model.layers = torch.nn.ModuleList()  # a decoder with zero blocks
    with pytest.raises(PrunekitError, match=r"model type 'olmo2' \(Olmo2ForCausalLM\) has no recognisable decoder block "
                       r"list \(an nn.ModuleList of its blocks \(Olmo2DecoderLayer\)"):
        family_for(model)


def test_structured_pruning_of_a_discovered_family_is_a_clear_error():
    from prunekit.structured import prune_structured

    with pytest.raises(PrunekitError, match="structured pruning needs the attention and MLP layout.*one-shot"):
        prune_structured(tiny_model("phi3"), structure="mlp", ratio=0.2, calibration=torch.zeros(2, 8, dtype=torch.long))


def test_multimodal_gemma3_prunes_its_language_model_and_reloads(tmp_path):
    """Gemma 3 with a vision tower: the blocks and the widths live in model.language_model / text_config."""
    from prunekit.core.io import save_pretrained
    from prunekit.models import load_model
    from prunekit.structured import prune_structured
    from tests.conftest import tiny_windows

    model = tiny_model("gemma3")
    assert family_for(model).name == "Gemma 3 (multimodal)" and len(blocks(model)) == 2
    result = prune_structured(model, method="magnitude", structure="mlp,blocks", ratio=0.25, remove=1,
                              allocation="uniform", round_to=1, calibration=tiny_windows())
    text = model.config.text_config
    assert (text.num_hidden_layers, text.intermediate_size, len(text.layer_types)) == (1, 96, 1)
    assert result.removed_blocks and not result.layer_shapes
    out = save_pretrained(model, tmp_path / "pruned", manifest={"layer_shapes": result.layer_shapes})
    reloaded = load_model(out)
    ids = tiny_windows(2, 16, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
