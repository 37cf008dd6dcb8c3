"""Physical removal: slice rows/columns out of linear layers, so the model really gets smaller.

Slicing keeps the module objects (hooks, names, tied parameters elsewhere stay valid) and replaces
their parameters by smaller dense copies. GPT-2's ``Conv1D`` (weight stored in x out) is handled
through its transposed layout.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.structured.groups import Group


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def keep_rows(module: nn.Module, rows: torch.Tensor) -> None:
    """Keep output features ``rows`` (and their bias entries)."""
    with torch.no_grad():
        if _is_conv1d(module):
            module.weight = nn.Parameter(module.weight[:, rows].clone())
            module.nf = len(rows)
        else:
            module.weight = nn.Parameter(module.weight[rows].clone())
            module.out_features = len(rows)
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias[rows].clone())


def keep_cols(module: nn.Module, cols: torch.Tensor) -> None:
    """Keep input features ``cols``."""
    with torch.no_grad():
        if _is_conv1d(module):
            module.weight = nn.Parameter(module.weight[cols].clone())
        else:
            module.weight = nn.Parameter(module.weight[:, cols].clone())
            module.in_features = len(cols)


def add_to_bias(module: nn.Module, delta: torch.Tensor) -> None:
    """``bias += delta``, creating a zero bias first on layers that had none."""
    with torch.no_grad():
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros_like(delta, dtype=module.weight.dtype))
        module.bias += delta.to(module.bias.dtype)


def set_head_count(attention: nn.Module, family: str, n_q: int, head_dim: int) -> None:
    """Tell an attention module how many heads it has now (only where it keeps a count)."""
    if family == "opt":
        attention.num_heads = n_q
        attention.embed_dim = n_q * head_dim
    elif family == "gpt2":
        attention.num_heads = n_q
        attention.split_size = n_q * head_dim
        attention.embed_dim = n_q * head_dim
    # Llama/Mistral/Qwen reshape with -1 heads and a fixed head_dim; GPT-NeoX with a fixed head_size.


def remove_units(group: Group, keep: torch.Tensor, family: str) -> None:
    """Keep only units ``keep`` (sorted unit indices) of ``group``; everything else is sliced away."""
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    for _, module, rows in group.producers:
        keep_rows(module, rows[keep].reshape(-1).sort().values)  # positional order keeps fused [q | k | v]
    _, consumer, cols = group.consumer
    keep_cols(consumer, cols[keep].reshape(-1).sort().values)
    if group.kind == "heads":
        set_head_count(group.attention, family, len(keep) * group.heads_per_unit, group.head_dim)
