"""One structured graph: the coupled groups of any model and the one rounding rule of kept widths.

A :class:`Group` is what must be removed together so the model stays a valid model. Each of its
units owns, in every :class:`Part`, an index row of positions: output rows of its *producers*, rows of
its *passengers* (layers the channels only pass through: batch norms, depthwise convolutions) and
input columns of its *consumers*. Weights are read as (out x in [x kernel]) through
:func:`~prunekit.core.families.weight_view`, whatever layout a layer stores. Two builders make the
same group type:

* the family table of a decoder LLM (:func:`find_groups`, :mod:`prunekit.core.families`):

  - MLP channel c: rows c of gate_proj and up_proj (fc1 / c_fc / dense_h_to_4h, plus bias) and
    column c of down_proj (fc2 / c_proj / dense_4h_to_h).
  - Attention unit: with grouped-query attention a key/value head is shared by ``n_q / n_kv`` query
    heads, so the unit is one kv group: the rows of its k and v head, the rows of all query heads
    that read it, and the matching columns of the output projection. Without GQA a unit is one head.
    Fused projections (GPT-2 ``c_attn`` = [q | k | v]; GPT-NeoX ``query_key_value`` interleaved per
    head as [q_h | k_h | v_h]) are handled by their row layouts.
  - Blocks (depth pruning, :func:`blocks_group`): one unit per block, removed from the block list.

* the ``torch.fx`` trace of a CNN (:func:`prunekit.structured.cnn.find_cnn_groups`): kind ``filters``,
  one unit per channel of a merged channel space.

Criteria score a group with ``score(group, ctx)``, mostly through :meth:`Group.unit_sums`; the one
removal is :func:`prunekit.structured.shrink.remove_units`; kept widths are rounded by :func:`kept_units`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.families import Adapter, AttentionLayout, weight_view

KINDS = ("mlp", "heads")  # the channel groups of a decoder LLM (blocks: depth pruning; filters: CNNs)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)  # passengers whose weights no score reads

# value(name, weight, bias) -> (weight-like, bias-like or None), elementwise, e.g. |w|^p
Value = Callable[[str, torch.Tensor, "torch.Tensor | None"], tuple[torch.Tensor, "torch.Tensor | None"]]


class Part(NamedTuple):
    """One layer of a group: ``index[u]`` are the positions unit ``u`` owns along its axis (rows of a
    producer or passenger, columns of a consumer)."""

    name: str
    module: nn.Module
    index: torch.Tensor  # units x k


@dataclass
class Group:
    """One coupled group: ``size`` units, each owning its rows and columns in every part."""

    kind: str  # "mlp" | "heads" | "blocks" | "filters"
    size: int
    producers: list[Part] = field(default_factory=list)  # output rows (scored)
    consumers: list[Part] = field(default_factory=list)  # input columns (scored)
    passengers: list[Part] = field(default_factory=list)  # rows sliced along; scored unless a norm
    block: int | None = None  # the LLM block the group lives in
    attention: nn.Module | None = None  # heads: the attention module whose head count changes
    heads_per_unit: int = 1  # query heads per unit (GQA group size)
    head_dim: int = 0
    bias_scored: bool = True  # producers' bias entries count in unit_sums (CNN filters: kernels only)
    score_dtype: torch.dtype = torch.float32  # unit_sums reads weights in at least this precision

    @property
    def n_units(self) -> int:
        return self.size

    @property
    def consumer(self) -> Part:
        """The one consumer of an LLM channel group (down_proj / o_proj)."""
        if len(self.consumers) != 1:
            raise ValueError(f"a {self.kind} group with {len(self.consumers)} consumers has no single consumer")
        return self.consumers[0]

    @property
    def width(self) -> int:
        """Channels (mlp, filters) or query heads (heads) currently present."""
        return self.n_units * self.heads_per_unit

    @property
    def unit_cost(self) -> int:
        """Parameters removed with one unit (weights and biases of producers, consumer columns)."""
        cost = 0
        for _, module, rows in self.producers:
            w = weight_view(module)
            cost += rows.shape[1] * (w[0].numel() + (module.bias is not None))
        for _, module, cols in self.consumers:
            w = weight_view(module)
            cost += cols.shape[1] * (w.numel() // w.shape[1])
        return cost

    def _read(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.promote_types(t.dtype, self.score_dtype))

    def unit_sums(self, value: Value) -> torch.Tensor:
        """Per unit, the float64 sum of ``value(name, weight, bias)`` over everything it owns: its rows of
        the producers (and their bias entries when ``bias_scored``) and of the passengers that are not
        norms, and its columns of the consumers. ``weight`` is the layer's weight as (out x in [x kernel])
        in at least ``score_dtype``; ``bias`` its bias or None."""
        total = torch.zeros(self.size, dtype=torch.float64)
        rows = self.producers + [p for p in self.passengers if not isinstance(p.module, NORMS)]
        for name, module, index in rows:
            bias = module.bias if self.bias_scored and module.bias is not None else None
            w, b = value(name, self._read(weight_view(module)), None if bias is None else self._read(bias.data))
            picked = w[index].double()
            total += picked.sum(dim=tuple(range(1, picked.dim()))).cpu()
            if b is not None:
                total += b[index].double().sum(dim=1).cpu()
        for name, module, index in self.consumers:
            w, _ = value(name, self._read(weight_view(module)), None)
            picked = w[:, index].double()
            total += picked.sum(dim=(0, *range(2, picked.dim()))).cpu()
        return total


def kept_units(group: Group, kept: int, round_to: int) -> int:
    """The one rounding rule of kept widths, for LLM MLP channels and CNN filters alike: the nearest
    multiple of ``round_to``, never below ``round_to`` (a group narrower than that keeps all its units),
    never above the group, at least one unit. Attention units are whole kv groups and are not rounded."""
    if group.kind == "heads":
        return kept
    if round_to > 1:
        kept = min(max(round_to, round_to * round(kept / round_to)), group.n_units)
    return max(1, min(kept, group.n_units))


# ------------------------------------------------------------------ the family table (decoder LLMs)

def _rows(n_units: int, per_unit: int, offset: int = 0) -> torch.Tensor:
    return offset + torch.arange(n_units * per_unit).reshape(n_units, per_unit)


def mlp_group(adapter: Adapter, i: int) -> Group:
    layout = adapter.family.mlp
    block = adapter.blocks[i]
    prefix = f"{adapter.block_prefix}.{i}."
    rows = _rows(adapter.mlp_width(i), 1)
    producers = [Part(prefix + p, block.get_submodule(p), rows) for p in layout.producers]
    consumer = Part(prefix + layout.consumer, block.get_submodule(layout.consumer), rows)
    return Group("mlp", len(rows), producers, [consumer], block=i)


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
    attn = adapter.blocks[i].get_submodule(layout.path)
    prefix = f"{adapter.block_prefix}.{i}.{layout.path}."
    n_q, n_kv, hd = adapter.attention_counts(i)
    producers = [Part(prefix + name, attn.get_submodule(name), rows)
                 for name, rows in _head_producer_rows(layout, n_q, n_kv, hd)]
    consumer = Part(prefix + layout.out, attn.get_submodule(layout.out), _rows(n_kv, (n_q // n_kv) * hd))
    return Group("heads", n_kv, producers, [consumer], block=i, attention=attn, heads_per_unit=n_q // n_kv,
                 head_dim=hd)


def blocks_group(adapter: Adapter) -> Group:
    """Depth pruning: one unit per block (removed from the block list, not sliced)."""
    return Group("blocks", len(adapter.blocks))


def find_groups(adapter: Adapter, kinds: tuple[str, ...] = KINDS) -> list[Group]:
    """All coupled channel groups of the requested kinds, block by block (heads before mlp in each block)."""
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
