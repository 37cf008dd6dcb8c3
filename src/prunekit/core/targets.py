"""Which layers to prune: class names or ``re:`` patterns on module names, minus an ignore list.

Only linear layers inside the decoder blocks are candidates: embeddings and ``lm_head`` are never
pruned.
"""

from __future__ import annotations

import re

from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.families import is_linear


def _matches(name: str, module: nn.Module, selector: str) -> bool:
    if selector.startswith("re:"):
        return re.search(selector[3:], name) is not None
    return type(module).__name__ == selector or (selector == "Linear" and is_linear(module))


def validate_selectors(selectors: list[str], key: str) -> None:
    for sel in selectors:
        if not isinstance(sel, str) or not sel:
            raise PrunekitError(f"{key} entries must be class names or 're:<regex>' strings, got {sel!r}")
        if sel.startswith("re:"):
            try:
                re.compile(sel[3:])
            except re.error as err:
                raise PrunekitError(f"bad regex in {key}: {sel!r} ({err})") from None


def select_layers(candidates: dict[str, nn.Module], targets: list[str], ignore: list[str]) -> dict[str, nn.Module]:
    """The candidates matched by any ``targets`` selector and by no ``ignore`` selector."""
    return {
        name: module
        for name, module in candidates.items()
        if any(_matches(name, module, t) for t in targets) and not any(_matches(name, module, i) for i in ignore)
    }
