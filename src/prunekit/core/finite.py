"""Non-finite numbers (NaN, +-inf) are refused where they would give a result that looks fine.

A NaN or infinite weight makes every score of its layer meaningless: Wanda's and magnitude's
top-k then keep an arbitrary set (a chance-level mask) and the run still exits 0. So each
capability checks the tensors it reads or writes at its one per-layer place: the weights and
calibration statistics of every target layer before it is pruned, the delta of every layer and the
merged weights before they are saved. The error names the tensor and how many values are not finite.
"""

from __future__ import annotations

import torch

from prunekit.core.errors import PrunekitError


def count_nonfinite(tensor: torch.Tensor) -> int:
    """How many entries of ``tensor`` are NaN or infinite (0 for integer tensors)."""
    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return 0
    return int((~torch.isfinite(tensor)).sum())


def check_finite(tensor: torch.Tensor, what: str, hint: str = "") -> None:
    """A one-line :class:`PrunekitError` naming ``what`` when ``tensor`` holds a NaN or an infinity."""
    bad = count_nonfinite(tensor)
    if bad:
        raise PrunekitError(f"{what} holds {bad:,} non-finite value{'s' if bad != 1 else ''} (NaN or inf) of "
                            f"{tensor.numel():,}{'; ' + hint if hint else ''}")


def check_finite_stats(stats, layer: str) -> None:
    """The calibration statistics of ``layer`` (a :class:`~prunekit.core.stats.LayerStats`) are finite:
    else the activations reaching the layer are NaN or overflowed. The sums of squares are the Hessian's
    diagonal, which bounds every other entry (Cauchy-Schwarz), so they stand for it too."""
    if stats is None:
        return
    for field in ("sq_norms", "sums"):
        value = getattr(stats, field, None)
        if isinstance(value, torch.Tensor):
            check_finite(value, f"the calibration statistics ({field}) of layer {layer!r}",
                         "the activations reaching it are NaN or overflow (a non-finite weight or norm before it, or "
                         "a 16-bit dtype too narrow for them: try --compute-dtype float32)")


def check_finite_state(model: torch.nn.Module, what: str, hint: str = "") -> None:
    """Every floating-point tensor of ``model``'s state dict is finite; the error names the first that is not."""
    for name, tensor in model.state_dict().items():
        check_finite(tensor, f"{what}: tensor {name!r}", hint)
