"""Sparsity report of any model: per-layer zeros, N:M validity, parameter counts."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.core.families import is_linear, weight_view

NM_CHECKS = ((2, 4), (4, 8))


def satisfies_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """At least ``n`` zeros in every group of ``m`` consecutive inputs of every row."""
    rows, cols = weight.shape
    if cols % m:
        return False
    zeros = (weight.reshape(rows, cols // m, m) == 0).sum(dim=2)
    return bool((zeros >= n).all())


def sparsity_report(model: nn.Module) -> dict:
    layers = []
    for name, module in model.named_modules():
        if not is_linear(module) or name.endswith("lm_head"):
            continue
        w = weight_view(module)
        zeros = int((w == 0).sum())
        layers.append({
            "name": name,
            "shape": list(w.shape),
            "zeros": zeros,
            "sparsity": zeros / w.numel(),
            "nm": {f"{n}:{m}": satisfies_nm(w, n, m) for n, m in NM_CHECKS},
        })
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    linear_total = sum(r["shape"][0] * r["shape"][1] for r in layers)
    linear_zeros = sum(r["zeros"] for r in layers)
    return {
        "parameters": params,
        "nonzero_parameters": nonzero,
        "linear_parameters": linear_total,
        "linear_sparsity": linear_zeros / max(linear_total, 1),
        "layers": layers,
    }


def format_report(report: dict, max_rows: int = 20) -> str:
    lines = [f"{'layer':<44} {'shape':>11} {'sparsity':>8}  2:4  4:8"]
    rows = report["layers"]
    shown = rows if len(rows) <= max_rows else rows[: max_rows // 2] + [None] + rows[-max_rows // 2 :]
    for r in shown:
        if r is None:
            lines.append("...")
            continue
        nm = "  ".join(" yes" if r["nm"][k] else "  no" for k in ("2:4", "4:8"))
        lines.append(f"{r['name']:<44} {r['shape'][0]:>5}x{r['shape'][1]:<5} {r['sparsity']:>8.3f} {nm}")
    lines.append(
        f"{len(rows)} linear layers, sparsity {report['linear_sparsity']:.2%}; parameters {report['parameters']:,} "
        f"({report['nonzero_parameters']:,} non-zero)"
    )
    return "\n".join(lines)
