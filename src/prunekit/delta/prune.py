"""``prune_delta(base, finetuned, step)``: prune the fine-tuning delta of every target layer.

The flow: check that the two models have the same tensors and shapes -> resolve the target layers
(the decoder blocks' linear layers, ``targets``/``ignore`` as in one-shot pruning) -> for each
target layer, ``D = W_ft - W_base`` becomes ``method.prune(D, p, ctx)`` and the fine-tuned layer is
rewritten as ``W_base + pruned D``. Methods that read statistics of the layer inputs (Wanda-style
norms, DAREx-q's X^T X) run inside the core block runner on the fine-tuned model, each layer pruned
as soon as its statistics are complete (as one-shot pruning does); a method with one global
rescaling factor has it chosen afterwards, as the candidate of lowest loss on the calibration text.

Parameters that are not targets (embeddings, norms, the head) keep their whole delta; the result
lists how many of them differ from the base.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from prunekit.core.calibration import resolve_compute_dtype
from prunekit.core.data_sources import calibration_windows, describe_source
from prunekit.core.errors import PrunekitError
from prunekit.core.families import adapter_for, weight_view
from prunekit.core.finite import check_finite, check_finite_state
from prunekit.core.layerwise import layer_generator, prune_layers, target_layers
from prunekit.core.recipe import CalibrationConfig, Step
from prunekit.core.registry import STEPS
from prunekit.core.stats import LayerStats
from prunekit.delta.base import DeltaContext, DeltaLayerReport, DeltaResult
from prunekit.evaluate.perplexity import window_nlls


def check_pair(base: nn.Module, finetuned: nn.Module) -> None:
    """The two models must have the same tensors with the same shapes (one-line error naming the first
    that differs)."""
    a, b = base.state_dict(), finetuned.state_dict()
    if type(base) is not type(finetuned):
        raise PrunekitError(f"the base is a {type(base).__name__} but the fine-tuned model a {type(finetuned).__name__}; "
                            "a delta needs two models of the same architecture")
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            which = "base" if name not in a else "fine-tuned model"
            raise PrunekitError(f"the {which} has no tensor {name!r}; base and fine-tuned model differ in architecture")
        if a[name].shape != b[name].shape:
            raise PrunekitError(f"tensor {name!r} is {list(a[name].shape)} in the base but {list(b[name].shape)} in "
                                "the fine-tuned model; a delta needs two models of the same shapes")


NONFINITE_INPUT = "a delta of NaN or inf gives a merged model of NaN or inf: give models whose weights are finite"


def check_merged(weight: torch.Tensor, name: str) -> None:
    """The merged weights of a layer (base + pruned, rescaled delta) are finite in their dtype."""
    check_finite(weight, f"the merged weights of layer {name!r}", f"the rescaled delta overflows {weight.dtype}; "
                 "lower the sparsity (DARE rescales the kept entries by 1/(1-p))")


def changed_tensors(base: nn.Module, finetuned: nn.Module, skip: set[str]) -> list[str]:
    """Names of the tensors (outside ``skip``) whose values differ between the two models."""
    a, b = base.state_dict(), finetuned.state_dict()
    return [name for name in a if name not in skip and not torch.equal(a[name], b[name])]


def calibration_loss(model: nn.Module, windows: torch.Tensor, chunk_size: int = 8) -> float:
    """Mean next-token loss of ``model`` on token ``windows`` (every window weighs the same)."""
    return float(window_nlls(model, windows, batch_size=chunk_size).mean())


def prune_delta(base: nn.Module, finetuned: nn.Module, step: Step | None = None,
                calibration: CalibrationConfig | None = None, tokenizer=None, progress: bool = False,
                **step_fields) -> DeltaResult:
    """Prune the delta of ``finetuned`` against ``base`` in place (``finetuned`` becomes the merged model).

    ``step`` is a :class:`DeltaStep` (or give its fields: ``prune_delta(b, f, method="dare",
    sparsity=0.9)``); ``calibration`` (a :class:`CalibrationConfig`, whose source may also be a 2-D
    tensor of token windows) is read only by methods that need data."""
    step = step if step is not None else STEPS.build("delta", step_fields)
    check_pair(base, finetuned)
    check_finite_state(base, "the base model", NONFINITE_INPUT)
    check_finite_state(finetuned, "the fine-tuned model", NONFINITE_INPUT)
    method = step.build()
    start = time.perf_counter()
    adapter = adapter_for(finetuned)
    per_block = target_layers(adapter, step.targets, step.ignore)
    calib = calibration or CalibrationConfig()
    result = DeltaResult(step.method, step.sparsity)
    windows = None
    if method.needs_calibration:
        result.calibration = describe_source(calib.source)
        windows = calibration_windows(calib.source, tokenizer, calib.nsamples, calib.seqlen, calib.seed)
    kept: dict[str, torch.Tensor] = {}  # the kept (unscaled) deltas, for a global factor

    @torch.no_grad()
    def prune_layer(name: str, module: nn.Module, stats: LayerStats | None) -> None:
        weight = weight_view(module)
        base_weight = weight_view(base.get_submodule(name))
        delta = weight.float() - base_weight.float()
        ctx = DeltaContext(name, stats, layer_generator(step.seed, name))
        new = method.prune(delta, step.sparsity, ctx)
        if method.global_factor:
            kept[name] = new
        weight.copy_((base_weight.float() + new).to(weight.dtype))
        check_merged(weight, name)
        result.layers.append(DeltaLayerReport(name, tuple(weight.shape), int((delta != 0).sum()),
                                              int((new != 0).sum()), ctx.factor))

    prune_layers(adapter, per_block, prune_layer, needs=method.statistics(), windows=windows,
                 chunk_size=calib.chunk_size, runner=calib.runner, progress=progress, desc=f"delta {step.method}",
                 compute_dtype=resolve_compute_dtype(calib.compute_dtype, next(finetuned.parameters()).dtype,
                                                     reconstructs=False))
    if method.global_factor:
        result.factor, result.factor_losses = _choose_factor(finetuned, base, kept, method.factor_grid(step.sparsity),
                                                             windows, calib.chunk_size, progress)
    targets = {f"{name}.weight" for layers in per_block for name in layers}
    result.untargeted_changed = changed_tensors(base, finetuned, targets)
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def _set_factor(model: nn.Module, base: nn.Module, kept: dict[str, torch.Tensor], factor: float) -> None:
    for name, delta in kept.items():
        weight = weight_view(model.get_submodule(name))
        weight.copy_((weight_view(base.get_submodule(name)).float() + factor * delta).to(weight.dtype))
        check_merged(weight, name)


def _choose_factor(model, base, kept, grid, windows, chunk_size, progress) -> tuple[float, dict]:
    """The factor of ``grid`` with the lowest calibration loss (ties: the first), set on ``model``."""
    losses = {}
    for factor in tqdm(grid, desc="delta factor", disable=not progress, leave=False):
        _set_factor(model, base, kept, factor)
        loss = calibration_loss(model, windows, chunk_size)
        losses[round(factor, 6)] = loss if math.isfinite(loss) else float("inf")
    best = min(losses, key=lambda f: (losses[f], f))
    chosen = next(f for f in grid if round(f, 6) == best)
    _set_factor(model, base, kept, chosen)
    return chosen, losses
