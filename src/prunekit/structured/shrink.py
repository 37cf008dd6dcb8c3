"""Physical removal: slice rows/columns out of linear layers, so the model really gets smaller.

Slicing keeps the module objects (hooks, names, tied parameters elsewhere stay valid) and replaces
their parameters by smaller dense copies. Weights are sliced as (out x in) through
:func:`~prunekit.core.families.weight_view`, whatever layout the layer stores.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.core.families import Family, set_weight, weight_view
from prunekit.structured.groups import Group


def keep_rows(module: nn.Module, rows: torch.Tensor) -> None:
    """Keep output features ``rows`` (and their bias entries)."""
    with torch.no_grad():
        set_weight(module, weight_view(module)[rows])
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias[rows].clone())


def keep_cols(module: nn.Module, cols: torch.Tensor) -> None:
    """Keep input features ``cols``."""
    with torch.no_grad():
        set_weight(module, weight_view(module)[:, cols])


def add_to_bias(module: nn.Module, delta: torch.Tensor) -> None:
    """``bias += delta``, creating a zero bias first on layers that had none."""
    with torch.no_grad():
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros_like(delta, dtype=module.weight.dtype))
        module.bias += delta.to(module.bias.dtype)


def remove_units(group: Group, keep: torch.Tensor, family: Family) -> None:
    """Keep only units ``keep`` (sorted unit indices) of ``group``; everything else is sliced away."""
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    for _, module, rows in group.producers:
        keep_rows(module, rows[keep].reshape(-1).sort().values)  # positional order keeps fused [q | k | v]
    _, consumer, cols = group.consumer
    keep_cols(consumer, cols[keep].reshape(-1).sort().values)
    if group.kind == "heads":
        family.set_head_count(group.attention, len(keep) * group.heads_per_unit, group.head_dim)
