"""Data-aware criteria from the one-shot foundation, usable while training.

When a batch of training data is at hand, the pruner can rank weights with the foundation's
calibration-based scores instead of |W| alone: every one-shot method that does not update weights
and declares statistics in its ``needs`` (:func:`data_criteria`), fed exactly those, e.g.

* ``wanda`` — |W_ij| · ||X_j||₂ (Sun et al. 2023; :func:`prunekit.oneshot.wanda.wanda_scores`),
  where X_j is input feature j of the layer over the calibration batch.
* ``gblm`` — |W_ij| · (α · G_ij + ||X_j||₂) (Das et al. 2023; :class:`prunekit.oneshot.gblm.GBLM`'s
  scores), G_ij = sqrt(Σ_samples g_ij²) with g the gradient of each sample's own loss
  (:func:`prunekit.core.stats.collect_gradients`, reduction ``"l2"``).

Both are recomputed from the *current* model every time the masks are updated, so a gradual
schedule uses the activations of the partly trained, partly pruned network. For a Conv2d layer the
"input features" are the im2col patch entries (channel × kernel position, the order of
``weight.reshape(out, -1)``), so the scores line up with the flattened kernel. SparseGPT is not a
score (it reconstructs the weights, which training then overwrites), so it is not offered here
(``updates_weights``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.stats import LAYER_NEEDS, LayerStats, collect_gradients


def data_criteria() -> tuple[str, ...]:
    """The training criteria that score weights on calibration data (they declare statistics)."""
    from prunekit.training.criteria import criteria, needs_data

    return tuple(name for name in criteria() if needs_data(name))


def _check_supported(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        return
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise PrunekitError(f"data-aware criteria need groups=1 convolutions; layer {name!r} has "
                             f"groups={module.groups}")
        if module.padding_mode != "zeros" or isinstance(module.padding, str) and module.padding != "valid":
            raise PrunekitError(f"data-aware criteria need explicit zero padding; layer {name!r} has "
                             f"padding={module.padding!r}, padding_mode={module.padding_mode!r}")
        return
    raise PrunekitError(f"data-aware criteria support Linear and Conv2d layers, not {type(module).__name__} "
                     f"{name!r}")


def layer_inputs_2d(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as a (rows x fan_in) matrix whose columns match ``weight.reshape(out, -1)``."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    padding = 0 if module.padding == "valid" else module.padding
    cols = nn.functional.unfold(x, module.kernel_size, module.dilation, padding, module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def split_calibration(calibration) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x`` or ``(x, y)`` → ``(x, y or None)``."""
    if isinstance(calibration, (tuple, list)):
        if len(calibration) != 2:
            raise PrunekitError(f"calibration must be x or (x, y), got a sequence of {len(calibration)}")
        return calibration[0], calibration[1]
    return calibration, None


def collect_stats(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor,
                  batch_size: int = 256, needs: frozenset[str] = frozenset({"norms"})) -> dict[str, LayerStats]:
    """The statistics ``needs`` names (default: Wanda's ||X_j||² sums) of every layer in ``modules`` over
    the calibration inputs ``x``.

    Runs in eval mode (batch-norm statistics are not updated) and without gradients.
    """
    stats = {}
    for name, module in modules.items():
        _check_supported(name, module)
        stats[name] = LayerStats.for_needs(module.weight[0].numel(), frozenset(needs) & LAYER_NEEDS)

    def hook_for(name: str):
        def hook(module, inputs, output):
            stats[name].add(layer_inputs_2d(module, inputs[0].detach()), samples=inputs[0].shape[0])
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i: i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


def data_scores(model: nn.Module, modules: dict[str, nn.Module], criterion: str, calibration,
                loss_fn: Callable | None = None) -> dict[str, torch.Tensor]:
    """Scores shaped like each layer's weight under a data-aware ``criterion`` (:func:`data_criteria`:
    ``wanda``, ``gblm`` ...) on the calibration batch: the one-shot method's own ``scores``, fed the
    statistics it declares in ``needs``."""
    from prunekit.core.registry import METHODS
    from prunekit.oneshot.base import LayerContext

    if criterion not in data_criteria():
        raise PrunekitError(f"unknown data-aware criterion {criterion!r}; expected one of {data_criteria()}")
    method = METHODS.build(criterion)
    x, y = split_calibration(calibration)
    device = next(iter(modules.values())).weight.device
    x = x.to(device)
    stats = collect_stats(model, modules, x, needs=method.needs)
    grads = {}
    if "gradients" in method.needs:
        if y is None:
            raise PrunekitError(f"criterion {criterion!r} needs labelled calibration data: calibration=(x, y)")
        loss_fn = loss_fn or nn.functional.cross_entropy
        grads = collect_gradients(model, (x, y.to(device)), modules, method.gradient_reduction,
                                  loss=lambda m, batch: loss_fn(m(batch[0]), batch[1]))
    scores = {}
    for name, module in modules.items():
        w = module.weight.detach()
        w2d = w.reshape(w.shape[0], -1).float()
        grad = grads[name].weight.reshape(w2d.shape) if name in grads else None
        scores[name] = method.scores(w2d, LayerContext(name, stats[name], grad)).reshape(w.shape)
    return scores
