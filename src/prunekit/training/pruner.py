"""A pruner that plugs into any PyTorch training loop.

In prunekit's loop it is a callback: ``train(model, (x, y), config, callbacks=[pruner])``.
In your own loop:

    pruner = Pruner(model, CubicSparsity(0.0, 0.9, start=100, end=2000, frequency=50))
    pruner.attach(optimizer)
    for step, (x, y) in enumerate(batches):
        loss = criterion(model(x), y); optimizer.zero_grad(); loss.backward(); optimizer.step()
        pruner.step(step)

Masks follow the one convention of :mod:`prunekit.core.masks`: ``True`` = pruned.
Three things keep a pruned weight at zero: a gradient hook zeroes its gradient,
the optimizer state (momentum, Adam moments) of pruned entries is zeroed when the mask changes,
and the mask is re-applied after every step (weight decay or a foreign update cannot revive it).

Which layers by default (:func:`prunable_weights`): in a decoder LM (a model whose family
:func:`prunekit.core.families.adapter_for` knows or discovers), the linear layers of the decoder
blocks, exactly what one-shot pruning targets: never the embeddings, never ``lm_head`` (with tied
weights pruning it would zero the embedding table too). In any other model (a CNN, an MLP), every
Linear/Conv layer except one that shares its weight with an ``nn.Embedding`` and the output layer
the model declares (``get_output_embeddings()``). ``targets=[...]`` names any Linear/Conv layer,
the head included, when you want it pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from prunekit.core.errors import PrunekitError, UnknownKey
from prunekit.core.families import adapter_for, is_linear
from prunekit.core.targets import select_layers
from prunekit.core.train import Batch, Callback, TrainState
from prunekit.training.criteria import check_criterion, compute_masks, needs_data, needs_labels
from prunekit.training.data_criteria import data_scores
from prunekit.training.schedules import ConstantSparsity

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg",
               "acc_delta", "sum")


def _prunable(module: nn.Module) -> bool:
    return isinstance(module, PRUNABLE) or is_linear(module)


def _block_layers(model: nn.Module) -> dict[str, nn.Module] | None:
    """The decoder blocks' linear layers of a Hugging Face LM, as one-shot pruning selects them
    (:func:`prunekit.core.targets.select_layers` with the default targets); None for a model
    without a ``config.model_type`` or whose blocks cannot be found."""
    if getattr(getattr(model, "config", None), "model_type", None) is None:
        return None
    try:
        adapter = adapter_for(model)
        layers = [select_layers(adapter.linears(i), ["Linear"], []) for i in range(len(adapter.blocks))]
    except PrunekitError:
        return None
    found = {name: m for block in layers for name, m in block.items()}
    return found or None


def _output_layer(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    try:
        return get() if callable(get) else None
    except (AttributeError, NotImplementedError):
        return None


def default_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers a :class:`Pruner` prunes when it is given no ``targets`` (see the module docstring):
    a decoder LM's block linears; otherwise every Linear/Conv layer but embedding-tied ones and the
    declared output layer."""
    blocks = _block_layers(model)
    if blocks is not None:
        return blocks
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = _output_layer(model)
    return {name: m for name, m in model.named_modules()
            if _prunable(m) and m is not head and id(m.weight) not in embedded}


def prunable_weights(model: nn.Module, skip: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """The weights a :class:`Pruner` prunes by default (:func:`default_layers`), by module name
    (``features.0``, ``model.layers.0.mlp.up_proj``), minus the ``skip`` names."""
    skip = set(skip)
    return {name: m.weight for name, m in default_layers(model).items() if name not in skip}


def _named_weights(model: nn.Module, targets: list[str]) -> dict[str, nn.Parameter]:
    """The weights of the Linear/Conv layers named in ``targets`` (any of them, the head included)."""
    named = dict(model.named_modules())
    missing = [t for t in targets if t not in named or not _prunable(named[t])]
    if missing:
        raise PrunekitError(f"no prunable Linear/Conv layer named {missing[0]!r}")
    return {t: named[t].weight for t in targets}


class Pruner(Callback):
    """Keeps ``model``'s prunable weights at the sparsity ``schedule(step)`` prescribes.

    As a training-loop callback it attaches the loop's optimizer at the start, calls
    :meth:`step` after every optimizer step and detaches the optimizer at the end; its masks and
    target are saved in checkpoints under ``pruner``.

    Args:
        model: any module; the layers of :func:`default_layers` are pruned (or those named in ``targets``).
        schedule: a callable step -> sparsity (see :mod:`prunekit.training.schedules`).
        criterion: any one-shot method that does not update weights (``magnitude``, ``random``, or a
            data-aware one such as ``wanda``, ``gblm``: see :mod:`prunekit.training.data_criteria`,
            which needs ``calibration``).
        scope: ``layer`` (same sparsity everywhere) or ``global`` (one threshold).
        floor: with ``scope='global'``, minimum fraction of each layer that is kept.
        targets: module names of Linear/Conv layers to prune; default :func:`default_layers`.
        skip: module names to leave dense (e.g. the classifier head).
        calibration: inputs ``x`` (``wanda``) or ``(x, y)`` (a criterion that reads gradients, ``gblm``)
            scored at every mask update.
        loss_fn: ``loss_fn(logits, y)`` for the gradients; default cross-entropy.
    """

    def __init__(self, model: nn.Module, schedule: Callable[[int], float], criterion: str = "magnitude",
                 scope: str = "layer", floor: float = 0.0, targets: Iterable[str] | None = None,
                 skip: Iterable[str] = (), seed: int = 0, calibration=None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        check_criterion(criterion)
        if needs_data(criterion) and calibration is None:
            raise PrunekitError(f"criterion {criterion!r} scores weights on data: pass calibration=x "
                                "(or (x, y) for a criterion that reads gradients)")
        if needs_labels(criterion) and not isinstance(calibration, (tuple, list)):
            raise PrunekitError(f"criterion {criterion!r} needs labelled calibration data: calibration=(x, y)")
        if targets is None:
            weights = prunable_weights(model, skip)
        else:
            skip = set(skip)
            weights = {n: w for n, w in _named_weights(model, list(targets)).items() if n not in skip}
        if not weights:
            raise PrunekitError(f"{type(model).__name__} has no Linear/Conv weight to prune")
        self.model = model
        self.schedule = schedule
        self.criterion = criterion
        self.scope = scope
        self.floor = floor
        self.weights = weights
        self.calibration = calibration
        self.loss_fn = loss_fn
        named = dict(model.named_modules())
        self.modules = {n: named[n] for n in weights}
        self.masks = {n: torch.zeros_like(w, dtype=torch.bool) for n, w in weights.items()}  # True = pruned
        self.target = 0.0
        self.optimizers: list[torch.optim.Optimizer] = []
        self.generator = torch.Generator().manual_seed(seed)
        self._hooks = [w.register_hook(self._grad_hook(n)) for n, w in weights.items()]

    key = "pruner"

    @classmethod
    @torch.no_grad()
    def from_zeros(cls, model: nn.Module, schedule: Callable[[int], float] | None = None,
                   **kwargs) -> Pruner:
        """A pruner whose masks are the zeros ``model``'s target weights already hold (True = a weight
        that is exactly 0), e.g. a model pruned one-shot (``prunekit.prune``) that goes on training with
        its masks held. ``schedule`` defaults to a constant at the measured sparsity, so the masks stay
        as they are; a schedule that rises later prunes further from them (pruned weights stay pruned).
        ``kwargs`` are the :class:`Pruner`'s (``criterion``, ``targets``, ``skip`` ...)."""
        pruner = cls(model, schedule if schedule is not None else ConstantSparsity(0.0), **kwargs)
        pruner.masks = {n: w == 0 for n, w in pruner.weights.items()}
        zeros = sum(int(m.sum()) for m in pruner.masks.values())
        pruner.target = zeros / sum(m.numel() for m in pruner.masks.values())
        if schedule is None:
            pruner.schedule = ConstantSparsity(pruner.target)
        return pruner

    def _grad_hook(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * (~self.masks[name]).to(grad.dtype)
        return hook

    def attach(self, optimizer: torch.optim.Optimizer) -> Pruner:
        """Also zero this optimizer's state for pruned entries whenever the masks change."""
        if optimizer not in self.optimizers:
            self.optimizers.append(optimizer)
        return self

    def detach(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop tracking ``optimizer`` (e.g. when a training phase ends)."""
        self.optimizers = [o for o in self.optimizers if o is not optimizer]

    def step(self, step: int) -> bool:
        """Call after ``optimizer.step()``: update masks if the schedule moved, re-apply them.

        Returns ``True`` when the masks changed at this step.
        """
        target = float(self.schedule(step))
        changed = target != self.target
        if changed:
            self.prune_to(target)
        else:
            self.apply_masks()
        return changed

    def on_start(self, state: TrainState) -> None:
        self.attach(state.optimizer)

    def after_step(self, state: TrainState, batch: Batch) -> None:
        self.step(batch.step)

    def on_end(self, state: TrainState) -> None:
        self.detach(state.optimizer)

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Recompute masks at ``sparsity`` from the current weights and apply them everywhere."""
        scores = None
        if needs_data(self.criterion):
            scores = data_scores(self.model, self.modules, self.criterion, self.calibration, self.loss_fn)
        self.masks = compute_masks(dict(self.weights), sparsity, self.criterion, self.scope, self.floor,
                                   self.masks, self.generator, scores)
        self.masks = {n: m.to(self.weights[n].device) for n, m in self.masks.items()}
        self.target = sparsity
        self.apply_masks()
        self.zero_optimizer_state()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every pruned weight (and its gradient, if one is stored)."""
        for name, w in self.weights.items():
            kept = ~self.masks[name]
            w.mul_(kept)
            if w.grad is not None:
                w.grad.mul_(kept)

    @torch.no_grad()
    def zero_optimizer_state(self) -> None:
        """Zero momentum / Adam moments of pruned entries so they cannot push weights back."""
        for opt in self.optimizers:
            for name, w in self.weights.items():
                state = opt.state.get(w, {})
                for key in _STATE_KEYS:
                    buf = state.get(key)
                    if isinstance(buf, torch.Tensor) and buf.shape == w.shape:
                        buf.mul_(~self.masks[name])

    def sparsity(self) -> float:
        """Measured fraction of zeros in the pruned weights (not just the mask target)."""
        zeros = sum(int((w == 0).sum()) for w in self.weights.values())
        return zeros / sum(w.numel() for w in self.weights.values())

    def layer_sparsity(self) -> dict[str, float]:
        """Fraction of pruned entries per layer, from the masks."""
        return {n: m.float().mean().item() for n, m in self.masks.items()}

    def nonzeros(self) -> int:
        """Kept weights in the pruned layers."""
        return sum(m.numel() - int(m.sum()) for m in self.masks.values())

    def state_dict(self) -> dict[str, object]:
        """The masks (True = pruned) and the current target sparsity."""
        return {"masks": {n: m.clone() for n, m in self.masks.items()}, "target": self.target}

    def load_state_dict(self, state: dict[str, object]) -> None:
        masks = state["masks"]
        unknown = set(masks) - set(self.weights)
        if unknown:
            raise UnknownKey(f"mask for unknown layer {min(unknown)!r}")
        self.masks = {n: masks[n].to(torch.bool) for n in self.weights}
        self.target = float(state["target"])
        self.apply_masks()

    def remove(self) -> None:
        """Detach the gradient hooks; the weights stay as they are."""
        for h in self._hooks:
            h.remove()
        self._hooks = []


@torch.no_grad()
def remask(model: nn.Module, masks: dict[str, torch.Tensor] | Pruner) -> int:
    """Zero again the pruned weights of ``model``: ``masks`` maps module names to bool masks shaped like
    their weights (True = pruned), or is a :class:`Pruner` (its masks). Use it after anything that
    writes the weights outside the pruner, e.g. PEFT's ``merge_and_unload()``, which adds the dense
    LoRA update ``B A`` to every entry, pruned ones included. Returns how many pruned entries were
    non-zero (revived) and are zero again."""
    if isinstance(masks, Pruner):
        masks = masks.masks
    revived = 0
    for name, mask in masks.items():
        try:
            weight = model.get_submodule(name).weight
        except AttributeError:
            raise PrunekitError(f"remask: the model has no layer {name!r} with a weight (masks name the layers "
                                "of the model they were made on; merge PEFT adapters first: merge_and_unload())") from None
        if tuple(mask.shape) != tuple(weight.shape):
            raise PrunekitError(f"remask: the mask of {name!r} is {tuple(mask.shape)} but its weight is "
                                f"{tuple(weight.shape)}; expected a mask shaped like the weight")
        pruned = mask.to(device=weight.device, dtype=torch.bool)
        revived += int((weight[pruned] != 0).sum())
        weight.masked_fill_(pruned, 0)
    return revived


def prune_once(model: nn.Module, sparsity: float, criterion: str = "magnitude", scope: str = "layer",
               floor: float = 0.0, seed: int = 0, **kwargs) -> Pruner:
    """One-shot pruning: a :class:`Pruner` with a constant schedule, already applied."""
    pruner = Pruner(model, ConstantSparsity(sparsity), criterion, scope, floor, seed=seed, **kwargs)
    pruner.step(0)
    return pruner
