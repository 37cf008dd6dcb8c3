"""Coupled groups of a decoder LLM: what must be removed together so the model stays a valid model.

A *group* couples the output rows of its producers with the input columns of its consumer:

* MLP channel c: rows c of gate_proj and up_proj (fc1 / c_fc / dense_h_to_4h, plus bias) and
  column c of down_proj (fc2 / c_proj / dense_4h_to_h).
* Attention unit: with grouped-query attention a key/value head is shared by ``n_q / n_kv`` query
  heads, so the unit is one kv group: the rows of its k and v head, the rows of all query heads
  that read it, and the matching columns of the output projection. Without GQA a unit is one head.
  Fused projections (GPT-2 ``c_attn`` = [q | k | v]; GPT-NeoX ``query_key_value`` interleaved per
  head as [q_h | k_h | v_h]) are handled by their row layouts, read from the family table
  (:mod:`prunekit.core.families`).

Each group stores, per unit, the producer rows and consumer columns as index tensors (units x k),
so scoring and removal are vectorised gathers. Weights are read through ``weight_view`` (out x in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.families import Adapter, AttentionLayout, weight_view

KINDS = ("mlp", "heads")


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
            total += w[rows].double().sum(dim=(1, 2)).cpu()
            if b is not None:
                total += b[rows].double().sum(dim=1).cpu()
        name, module, cols = self.consumer
        w, _ = value(name, module)
        total += w[:, cols].double().sum(dim=(0, 2)).cpu()
        return total


def _rows(n_units: int, per_unit: int, offset: int = 0) -> torch.Tensor:
    return offset + torch.arange(n_units * per_unit).reshape(n_units, per_unit)


def _get(block: nn.Module, path: str) -> nn.Module:
    return block.get_submodule(path)


def mlp_group(adapter: Adapter, i: int) -> Group:
    layout = adapter.family.mlp
    block = adapter.blocks[i]
    prefix = f"{adapter.block_prefix}.{i}."
    rows = _rows(adapter.mlp_width(i), 1)
    producers = [(prefix + p, _get(block, p), rows) for p in layout.producers]
    return Group("mlp", i, producers, (prefix + layout.consumer, _get(block, layout.consumer), rows))


def _head_producer_rows(layout: AttentionLayout, n_q: int, n_kv: int, head_dim: int) -> list[tuple[str, torch.Tensor]]:
    """(producer name, rows per unit) for each attention producer; a unit is one kv group."""
    g = n_q // n_kv
    q_rows = _rows(n_kv, g * head_dim)  # query heads of kv group u are contiguous: heads u*g .. u*g+g-1
    kv_rows = _rows(n_kv, head_dim)
    if layout.qkv is None:
        return [(layout.q, q_rows), (layout.k, kv_rows), (layout.v, kv_rows)]
    if layout.qkv_order == "stacked":  # rows [q | k | v]
        q_size, kv_size = n_q * head_dim, n_kv * head_dim
        return [(layout.qkv, torch.cat([q_rows, kv_rows + q_size, kv_rows + q_size + kv_size], dim=1))]
    return [(layout.qkv, _rows(n_q, 3 * head_dim))]  # "per_head": rows [q_h | k_h | v_h] for each head h


def heads_group(adapter: Adapter, i: int) -> Group:
    layout = adapter.family.attention
    attn = _get(adapter.blocks[i], layout.path)
    prefix = f"{adapter.block_prefix}.{i}.{layout.path}."
    n_q, n_kv, hd = adapter.attention_counts(i)
    producers = [(prefix + name, _get(attn, name), rows) for name, rows in _head_producer_rows(layout, n_q, n_kv, hd)]
    consumer = (prefix + layout.out, _get(attn, layout.out), _rows(n_kv, (n_q // n_kv) * hd))
    return Group("heads", i, producers, consumer, attention=attn, heads_per_unit=n_q // n_kv, head_dim=hd)


def find_groups(adapter: Adapter, kinds: tuple[str, ...] = KINDS) -> list[Group]:
    """All coupled groups of the requested kinds, block by block (heads before mlp in each block)."""
    for kind in kinds:
        if kind not in KINDS:
            raise PrunekitError(f"structure {kind!r} has no channel groups; choose from {', '.join(KINDS)}")
    groups = []
    for i in range(len(adapter.blocks)):
        if "heads" in kinds:
            groups.append(heads_group(adapter, i))
        if "mlp" in kinds:
            groups.append(mlp_group(adapter, i))
    return groups
