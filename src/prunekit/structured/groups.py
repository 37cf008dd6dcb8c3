"""Coupled groups of a decoder LLM: what must be removed together so the model stays a valid model.

A *group* couples the output rows of its producers with the input columns of its consumer:

* MLP channel c: rows c of gate_proj and up_proj (fc1 / c_fc / dense_h_to_4h, plus bias) and
  column c of down_proj (fc2 / c_proj / dense_4h_to_h).
* Attention unit: with grouped-query attention a key/value head is shared by ``n_q / n_kv`` query
  heads, so the unit is one kv group: the rows of its k and v head, the rows of all query heads
  that read it, and the matching columns of the output projection. Without GQA a unit is one head.
  Fused projections (GPT-2 ``c_attn`` = [q | k | v]; GPT-NeoX ``query_key_value`` interleaved per
  head as [q_h | k_h | v_h]) are handled by their row layouts.

Each group stores, per unit, the producer rows and consumer columns as index tensors (units x k),
so scoring and removal are vectorised gathers. Weights are read through ``weight_view`` (out x in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunekit.models.adapters import Adapter, weight_view

KINDS = ("mlp", "heads")

# model_type -> (mlp producers, mlp consumer) relative to the block
MLP_LAYOUT = {
    "llama": (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
    "mistral": (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
    "qwen2": (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
    "qwen3": (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
    "opt": (("fc1",), "fc2"),
    "gpt2": (("mlp.c_fc",), "mlp.c_proj"),
    "gpt_neox": (("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h"),
}
# model_type -> attention module path relative to the block
ATTENTION = {"llama": "self_attn", "mistral": "self_attn", "qwen2": "self_attn", "qwen3": "self_attn",
             "opt": "self_attn", "gpt2": "attn", "gpt_neox": "attention"}


@dataclass
class Group:
    """One coupled group in one block; ``units`` rows of index tensors select what each unit owns."""

    kind: str  # "mlp" | "heads"
    block: int
    producers: list[tuple[str, nn.Module, torch.Tensor]]  # (name, module, rows: units x r)
    consumer: tuple[str, nn.Module, torch.Tensor]  # (name, module, cols: units x c)
    attention: nn.Module | None = None
    heads_per_unit: int = 1  # query heads per unit (GQA group size)
    head_dim: int = 0

    @property
    def n_units(self) -> int:
        return self.consumer[2].shape[0]

    @property
    def unit_cost(self) -> int:
        """Parameters removed with one unit (weights and biases of producers and consumer)."""
        cost = 0
        for _, module, rows in self.producers:
            cost += rows.shape[1] * (weight_view(module).shape[1] + (module.bias is not None))
        _, module, cols = self.consumer
        return cost + cols.shape[1] * weight_view(module).shape[0]

    @property
    def width(self) -> int:
        """Channels (mlp) or query heads (heads) currently present."""
        return self.n_units * self.heads_per_unit

    def unit_sums(self, value) -> torch.Tensor:
        """Sum of ``value(name, module) -> (weight-like, bias-like or None)`` over each unit's slices."""
        total = torch.zeros(self.n_units, dtype=torch.float64)
        for name, module, rows in self.producers:
            w, b = value(name, module)
            total += w[rows].double().sum(dim=(1, 2))
            if b is not None:
                total += b[rows].double().sum(dim=1)
        name, module, cols = self.consumer
        w, _ = value(name, module)
        total += w[:, cols].double().sum(dim=(0, 2))
        return total


def _rows(n_units: int, per_unit: int, offset: int = 0) -> torch.Tensor:
    return offset + torch.arange(n_units * per_unit).reshape(n_units, per_unit)


def _get(block: nn.Module, path: str) -> nn.Module:
    return block.get_submodule(path)


def mlp_group(adapter: Adapter, i: int) -> Group:
    producers, consumer = MLP_LAYOUT[adapter.family]
    block = adapter.blocks[i]
    prefix = f"{adapter.block_prefix}.{i}."
    width = weight_view(_get(block, consumer)).shape[1]
    rows = _rows(width, 1)
    return Group("mlp", i, [(prefix + p, _get(block, p), rows) for p in producers], (prefix + consumer, _get(block, consumer), rows))


def attention_counts(adapter: Adapter, i: int) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of block ``i``, read from the module shapes."""
    attn = _get(adapter.blocks[i], ATTENTION[adapter.family])
    cfg = adapter.model.config
    if adapter.family in ("opt", "gpt2"):
        hd = cfg.hidden_size // cfg.num_attention_heads
        n = weight_view(attn.out_proj if adapter.family == "opt" else attn.c_proj).shape[1] // hd
        return n, n, hd
    if adapter.family == "gpt_neox":
        hd = attn.head_size
        n = attn.dense.weight.shape[1] // hd
        return n, n, hd
    hd = attn.head_dim
    return attn.q_proj.weight.shape[0] // hd, attn.k_proj.weight.shape[0] // hd, hd


def heads_group(adapter: Adapter, i: int) -> Group:
    block = adapter.blocks[i]
    path = ATTENTION[adapter.family]
    attn = _get(block, path)
    prefix = f"{adapter.block_prefix}.{i}.{path}."
    n_q, n_kv, hd = attention_counts(adapter, i)
    g = n_q // n_kv
    q_rows = _rows(n_kv, g * hd)  # query heads of kv group u are contiguous: heads u*g .. u*g+g-1
    kv_rows = _rows(n_kv, hd)
    fam = adapter.family
    if fam == "gpt2":
        e = n_q * hd
        fused = torch.cat([q_rows, kv_rows + e, kv_rows + 2 * e], dim=1)
        producers = [(prefix + "c_attn", attn.c_attn, fused)]
        consumer = (prefix + "c_proj", attn.c_proj, q_rows)
    elif fam == "gpt_neox":
        producers = [(prefix + "query_key_value", attn.query_key_value, _rows(n_q, 3 * hd))]
        consumer = (prefix + "dense", attn.dense, q_rows)
    else:
        out = "out_proj" if fam == "opt" else "o_proj"
        producers = [(prefix + "q_proj", attn.q_proj, q_rows), (prefix + "k_proj", attn.k_proj, kv_rows),
                     (prefix + "v_proj", attn.v_proj, kv_rows)]
        consumer = (prefix + out, getattr(attn, out), q_rows)
    return Group("heads", i, producers, consumer, attention=attn, heads_per_unit=g, head_dim=hd)


def find_groups(adapter: Adapter, kinds: tuple[str, ...] = KINDS) -> list[Group]:
    """All coupled groups of the requested kinds, block by block (mlp before heads in each block)."""
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"structure {kind!r} has no channel groups; choose from {', '.join(KINDS)}")
    groups = []
    for i in range(len(adapter.blocks)):
        if "heads" in kinds:
            groups.append(heads_group(adapter, i))
        if "mlp" in kinds:
            groups.append(mlp_group(adapter, i))
    return groups
