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

from prunekit.core.families import Adapter, adapter_for, new_linear, weight_view


def rewrite_config(adapter: Adapter) -> None:
    """Write the widths that are the same in every block into the config (names from the family table)."""
    cfg = adapter.model.config
    mlp, attention = adapter.family.mlp, adapter.family.attention
    n = len(adapter.blocks)
    cfg.num_hidden_layers = n
    if getattr(cfg, "layer_types", None) is not None and len(cfg.layer_types) != n:
        raise RuntimeError("layer_types must be trimmed when blocks are removed")
    widths = {adapter.mlp_width(i) for i in range(n)}
    if len(widths) == 1:
        setattr(cfg, mlp.width_key, widths.pop())
    counts = {adapter.attention_counts(i) for i in range(n)}
    if len(counts) == 1 and attention.head_dim_key is not None:  # else head_dim is hidden / heads
        n_q, n_kv, head_dim = counts.pop()
        setattr(cfg, attention.heads_key, n_q)
        if attention.kv_heads_key is not None:
            setattr(cfg, attention.kv_heads_key, n_kv)
        setattr(cfg, attention.head_dim_key, head_dim)


def _reference(adapter: Adapter) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(adapter.model.config)


def layer_shapes(model: nn.Module) -> dict:
    """The block linears (and attention head counts) that differ from what the config builds; {} if none."""
    adapter = adapter_for(model)
    ref = adapter_for(_reference(adapter))
    changed, heads = {}, {}
    for i in range(len(adapter.blocks)):
        reference = ref.linears(i)
        for name, module in adapter.linears(i).items():
            other = reference[name]
            if module.weight.shape != other.weight.shape or (module.bias is None) != (other.bias is None):
                out, inp = weight_view(module).shape
                changed[name] = [out, inp, module.bias is not None]
        if adapter.attention_counts(i) != ref.attention_counts(i):
            heads[f"{adapter.block_prefix}.{i}.{adapter.family.attention.path}"] = adapter.attention_counts(i)[0]
    return {"linears": changed, "heads": heads} if changed or heads else {}


def apply_layer_shapes(model: nn.Module, shapes: dict) -> None:
    """Replace the recorded linears by modules of the recorded shapes and set the head counts."""
    adapter = adapter_for(model)
    for name, (out, inp, bias) in shapes.get("linears", {}).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, new_linear(getattr(parent, child), out, inp, bias))
    for name, n_heads in shapes.get("heads", {}).items():
        i = int(name[len(adapter.block_prefix) + 1 :].split(".")[0])
        head_dim = adapter.attention_counts(i)[2]
        adapter.family.set_head_count(model.get_submodule(name), n_heads, head_dim)
