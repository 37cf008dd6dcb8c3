"""Physical removal: slice rows/columns out of layers, so the model really gets smaller.

The one removal of every structured group (:class:`~prunekit.structured.graph.Group`), LLM and CNN
alike: :func:`remove_units` takes the kept units of several groups at once, marks the positions of
every layer their removed units own (a consumer fed by several groups, e.g. after ``torch.cat``, gets
the columns of all of them) and slices each layer once. Slicing keeps the module objects (hooks,
names, tied parameters elsewhere stay valid) and replaces their parameters by smaller dense copies
(``requires_grad`` as before). Linear weights are sliced as (out x in) through
:func:`~prunekit.core.families.weight_view`, whatever layout the layer stores; convolutions along
their output (dim 0) or input channels (dim 1); batch norms with their running statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.core.families import Family, is_linear, set_weight, weight_view
from prunekit.structured.graph import NORMS, Group


def _parameter(like: nn.Parameter, data: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(data.clone(memory_format=torch.contiguous_format), requires_grad=like.requires_grad)


def _set_linear_weight(module: nn.Module, weight: torch.Tensor) -> None:
    requires_grad = module.weight.requires_grad
    set_weight(module, weight)
    module.weight.requires_grad_(requires_grad)


def keep_rows(module: nn.Module, rows: torch.Tensor) -> None:
    """Keep output features ``rows`` (sorted positions) and their bias entries (norms: their statistics)."""
    n = len(rows)
    with torch.no_grad():
        if is_linear(module):
            _set_linear_weight(module, weight_view(module)[rows])
        elif module.weight is not None:
            module.weight = _parameter(module.weight, module.weight.data[rows])
        if getattr(module, "bias", None) is not None:
            module.bias = _parameter(module.bias, module.bias.data[rows])
        if isinstance(module, NORMS):
            for name in ("running_mean", "running_var"):
                if getattr(module, name) is not None:
                    setattr(module, name, getattr(module, name)[rows].clone())
            module.num_features = n
        elif isinstance(module, nn.Conv2d):
            if module.groups > 1:  # depthwise: in = out = groups
                module.groups = module.in_channels = n
            module.out_channels = n


def keep_cols(module: nn.Module, cols: torch.Tensor) -> None:
    """Keep input features ``cols`` (sorted positions)."""
    with torch.no_grad():
        if is_linear(module):
            _set_linear_weight(module, weight_view(module)[:, cols])
        else:
            module.weight = _parameter(module.weight, module.weight.data[:, cols])
            module.in_channels = len(cols)


def add_to_bias(module: nn.Module, delta: torch.Tensor) -> None:
    """``bias += delta``, creating a zero bias first on layers that had none."""
    with torch.no_grad():
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros_like(delta, dtype=module.weight.dtype))
        module.bias += delta.to(module.bias.dtype)


def _out_size(module: nn.Module) -> int:
    return module.num_features if isinstance(module, NORMS) else weight_view(module).shape[0]


def remove_units(plan: list[tuple[Group, torch.Tensor]], family: Family | None = None) -> None:
    """Keep only units ``keep`` of each ``(group, keep)`` in ``plan``; everything else is sliced away.

    Attention groups also set their module's head counts through ``family`` (needed for them)."""
    rows: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    cols: dict[str, tuple[nn.Module, torch.Tensor]] = {}

    def kept(table, part, size):
        return table.setdefault(part.name, (part.module, torch.ones(size, dtype=torch.bool)))[1]

    for group, keep in plan:
        removed = torch.ones(group.n_units, dtype=torch.bool)
        removed[torch.as_tensor(keep, dtype=torch.long)] = False
        for part in group.producers + group.passengers:
            kept(rows, part, _out_size(part.module))[part.index[removed].reshape(-1)] = False
        for part in group.consumers:
            kept(cols, part, weight_view(part.module).shape[1])[part.index[removed].reshape(-1)] = False
    for module, keep in rows.values():
        keep_rows(module, keep.nonzero().flatten())  # positional order keeps fused [q | k | v]
    for module, keep in cols.values():
        keep_cols(module, keep.nonzero().flatten())
    for group, keep in plan:
        if group.kind == "heads":
            if family is None:
                raise ValueError("removing attention units needs the model family (its head counts)")
            family.set_head_count(group.attention, len(keep) * group.heads_per_unit, group.head_dim)
