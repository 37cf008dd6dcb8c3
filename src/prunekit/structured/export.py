"""Making a physically pruned model saveable and reloadable.

After pruning, the config is rewritten where one value describes every block (intermediate size,
head counts, number of blocks): then the folder loads with plain ``from_pretrained``. What the config
cannot express (different widths per block, heads of MHA families whose head_dim is derived from
hidden/heads, biases added by bias compensation) is recorded as ``layer_shapes``::

    {"linears": {"model.layers.3.mlp.down_proj": [out, in, has_bias], ...},
     "heads": {"model.layers.3.self_attn": n_query_heads, ...}}

and :func:`apply_layer_shapes` rebuilds exactly those modules on a model built from the config
with the stock transformers classes (no remote code) before the weights are loaded.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.adapters import Adapter, adapter_for, is_prunable_linear, weight_view
from prunekit.structured.groups import ATTENTION, MLP_LAYOUT, attention_counts
from prunekit.structured.shrink import set_head_count

MLP_CONFIG_KEY = {"llama": "intermediate_size", "mistral": "intermediate_size", "qwen2": "intermediate_size",
                  "qwen3": "intermediate_size", "gpt_neox": "intermediate_size", "opt": "ffn_dim", "gpt2": "n_inner"}
GQA_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def rewrite_config(adapter: Adapter) -> None:
    """Write the widths that are the same in every block into the config."""
    cfg = adapter.model.config
    n = len(adapter.blocks)
    cfg.num_hidden_layers = n
    if getattr(cfg, "layer_types", None) is not None and len(cfg.layer_types) != n:
        raise RuntimeError("layer_types must be trimmed when blocks are removed")
    consumer = MLP_LAYOUT[adapter.family][1]
    widths = {weight_view(b.get_submodule(consumer)).shape[1] for b in adapter.blocks}
    if len(widths) == 1:
        setattr(cfg, MLP_CONFIG_KEY[adapter.family], widths.pop())
    counts = {attention_counts(adapter, i)[:2] for i in range(n)}
    if len(counts) == 1 and adapter.family in GQA_FAMILIES:
        cfg.num_attention_heads, cfg.num_key_value_heads = counts.pop()
        cfg.head_dim = attention_counts(adapter, 0)[2]  # no longer hidden_size / num_attention_heads


def _reference(adapter: Adapter) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(adapter.model.config)


def layer_shapes(model: nn.Module) -> dict:
    """The block linears (and attention head counts) that differ from what the config builds; {} if none."""
    adapter = adapter_for(model)
    ref = adapter_for(_reference(adapter))
    linears, heads = {}, {}
    for i, (block, ref_block) in enumerate(zip(adapter.blocks, ref.blocks)):
        prefix = f"{adapter.block_prefix}.{i}"
        ref_modules = dict(ref_block.named_modules())
        for name, module in block.named_modules():
            if not is_prunable_linear(module):
                continue
            other = ref_modules[name]
            if module.weight.shape != other.weight.shape or (module.bias is None) != (other.bias is None):
                out, inp = weight_view(module).shape
                linears[f"{prefix}.{name}"] = [out, inp, module.bias is not None]
        if attention_counts(adapter, i) != attention_counts(ref, i):
            heads[f"{prefix}.{ATTENTION[adapter.family]}"] = attention_counts(adapter, i)[0]
    return {"linears": linears, "heads": heads} if linears or heads else {}


def _new_linear(old: nn.Module, out: int, inp: int, bias: bool) -> nn.Module:
    dtype = old.weight.dtype
    if type(old).__name__ == "Conv1D":
        new = type(old)(out, inp)  # Conv1D(nf=out, nx=in)
        if not bias:
            new.bias = None
        return new.to(dtype)
    return nn.Linear(inp, out, bias=bias, dtype=dtype)


def apply_layer_shapes(model: nn.Module, shapes: dict) -> None:
    """Replace the recorded linears by modules of the recorded shapes and set the head counts."""
    adapter = adapter_for(model)
    for name, (out, inp, bias) in shapes.get("linears", {}).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _new_linear(getattr(parent, child), out, inp, bias))
    for name, n_heads in shapes.get("heads", {}).items():
        i = int(name[len(adapter.block_prefix) + 1 :].split(".")[0])
        head_dim = attention_counts(adapter, i)[2]
        set_head_count(model.get_submodule(name), adapter.family, n_heads, head_dim)
