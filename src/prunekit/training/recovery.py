"""Recovering accuracy after one-shot pruning.

* :func:`finetune`: retrain all weights with the masks held fixed (Han et al. 2015).
* :func:`perp_recover`: parameter-efficient retraining after pruning (PERP; Zimmer et al. 2023,
  "PERP: Rethinking the Prune-Retrain Paradigm in the Era of LLMs"). Only biases and
  normalization parameters are trained, optionally with low-rank adapters on the pruned layers.
  The adapters are masked (their "MaskLoRA" variant): the layer computes with (W + B A) with the
  pruned entries zeroed, so merging them back cannot revive a pruned weight.
* :class:`CausalLMLoss`: the next-token loss of a Hugging Face causal LM as a training-loop
  callback, for recovery fine-tuning after structured pruning (``benchmarks/structured_smollm2_recovery.py``),
  or the loss on chosen tokens only (:func:`label_loss`), e.g. the answer of a multiple-choice
  prompt (:func:`answer_prompts`; the classifier pair of ``benchmarks/delta_pairs.py``).

All of them train with the one loop, :func:`prunekit.core.train.train`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.train import Batch, Callback, TrainConfig, TrainState, train
from prunekit.training.pruner import Pruner

NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)  # torch's own


def is_norm(module: nn.Module) -> bool:
    """Whether PERP treats ``module`` as a normalization layer: one of torch's (BatchNorm, InstanceNorm,
    LayerNorm, GroupNorm, RMSNorm), or any module whose class name contains ``Norm`` and whose own
    parameters are all 1-D (a scale, maybe a shift, per feature): ``LlamaRMSNorm``, ``Gemma3RMSNorm``,
    ``T5LayerNorm`` ... found by their role, not by a list of classes. Linear, Conv and Embedding layers
    never are (whatever their name), nor is a module without parameters of its own."""
    if isinstance(module, NORMS):
        return True
    if isinstance(module, (nn.Linear, nn.Embedding, nn.modules.conv._ConvNd)) or "Norm" not in type(module).__name__:
        return False
    own = list(module.parameters(recurse=False))
    return bool(own) and all(p.dim() == 1 for p in own)


class MaskedLoRA(nn.Module):
    """A Linear/Conv layer whose effective weight is (W + (alpha/r) B A) ⊙ (1 - M) (Hu et al. 2021 LoRA,
    masked), M the bool ``mask`` of pruned weights (True = pruned).

    A is (r, fan_in) with Kaiming-uniform init and B is (out, r) zeros, so training starts from the
    pruned layer exactly. ``base.weight`` is frozen; only A and B train.
    """

    def __init__(self, base: nn.Module, mask: torch.Tensor, rank: int = 4, alpha: float | None = None):
        super().__init__()
        if rank < 1:
            raise PrunekitError(f"LoRA rank must be >= 1, got {rank!r}")
        if not isinstance(base, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise PrunekitError(f"MaskedLoRA wraps Linear/Conv layers, got {type(base).__name__}")
        self.base = base
        self.register_buffer("kept", (~mask.to(torch.bool)).to(base.weight.dtype))  # 1 = kept, 0 = pruned
        out_features, fan_in = base.weight.shape[0], base.weight[0].numel()
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(rank, fan_in, device=device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, device=device))
        self.scale = (alpha if alpha is not None else rank) / rank

    def merged_weight(self) -> torch.Tensor:
        """(W + scale * B A) with the pruned entries zeroed, reshaped to the base weight."""
        delta = (self.lora_b @ self.lora_a).reshape(self.base.weight.shape)
        return (self.base.weight + self.scale * delta) * self.kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.merged_weight()
        if isinstance(self.base, nn.Linear):
            return nn.functional.linear(x, weight, self.base.bias)
        return self.base._conv_forward(x, weight, self.base.bias)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def add_masked_lora(model: nn.Module, masks: dict[str, torch.Tensor], rank: int = 4,
                    alpha: float | None = None) -> list[str]:
    """Wrap every layer named in ``masks`` (True = pruned) in a :class:`MaskedLoRA`; returns the wrapped names."""
    for name, mask in masks.items():
        _set_submodule(model, name, MaskedLoRA(model.get_submodule(name), mask, rank, alpha))
    return list(masks)


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every :class:`MaskedLoRA` back into its base layer, in place; returns how many were merged.

    The merged weight is copied into the base layer's existing parameter, so a :class:`Pruner`
    holding a reference to it keeps working.
    """
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, MaskedLoRA)]
    for name, module in wrapped:
        module.base.weight.copy_(module.merged_weight())
        _set_submodule(model, name, module.base)
    return len(wrapped)


def perp_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Biases, normalization weights/biases (:func:`is_norm`) and LoRA factors: the parameters PERP trains."""
    params, seen = [], set()
    for module in model.modules():
        norm = is_norm(module)
        for pname, p in module.named_parameters(recurse=False):
            trainable = (norm or pname == "bias" or pname.startswith("lora_"))
            if trainable and id(p) not in seen:
                params.append(p)
                seen.add(id(p))
    return params


def finetune(model: nn.Module, pruner: Pruner, x: torch.Tensor, y: torch.Tensor, epochs: float = 1.0,
             lr: float = 0.01, optimizer: str = "sgd", callbacks: Sequence[Callback] = (), **config: Any) -> int:
    """Retrain every weight with ``pruner``'s masks held fixed. Returns the number of steps.

    ``config`` holds further :class:`~prunekit.core.train.TrainConfig` settings (``batch_size``, ``seed``...).
    """
    settings = TrainConfig(epochs=epochs, lr=lr, optimizer=optimizer, **config)
    return train(model, (x, y), settings, [FixedMasks(pruner), *callbacks])


def perp_recover(model: nn.Module, pruner: Pruner, x: torch.Tensor, y: torch.Tensor, epochs: float = 1.0,
                 lr: float = 1e-3, lora_rank: int = 0, lora_alpha: float | None = None,
                 optimizer: str = "adamw", callbacks: Sequence[Callback] = (), **config: Any) -> int:
    """PERP: train only biases and norms (plus masked LoRA if ``lora_rank > 0``), then merge.

    Every other parameter is frozen during recovery and unfrozen afterwards; pruned weights stay zero.
    No weight decay; ``config`` holds further :class:`~prunekit.core.train.TrainConfig` settings.
    """
    settings = TrainConfig(epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=0.0, **config)
    if lora_rank:
        add_masked_lora(model, {n: m for n, m in pruner.masks.items()}, lora_rank, lora_alpha)
    trainable = perp_parameters(model)
    if not trainable:
        raise PrunekitError(f"{type(model).__name__} has no bias, normalization or LoRA parameter for PERP to "
                            "train; pass lora_rank >= 1 or use finetune()")
    before = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    try:
        steps = train(model, (x, y), settings, callbacks)  # the optimizer covers what requires gradients
    finally:
        merge_lora(model)
        for p in model.parameters():
            p.requires_grad_(before.get(id(p), True))
    pruner.apply_masks()
    return steps


class FixedMasks(Callback):
    """Keeps a pruner's current masks at every step (while fine-tuning); the schedule is not consulted."""

    def __init__(self, pruner: Pruner):
        self.pruner = pruner

    def on_start(self, state: TrainState) -> None:
        self.pruner.attach(state.optimizer)

    def after_step(self, state: TrainState, batch: Batch) -> None:
        self.pruner.apply_masks()

    def on_end(self, state: TrainState) -> None:
        self.pruner.detach(state.optimizer)


class CausalLMLoss(Callback):
    """The loss of a Hugging Face causal LM on token sequences.

    Train with ``data = (ids, None)``: each row of ``ids`` is one window of token ids, and the loss
    is ``model(input_ids=x, labels=x).loss``, the mean next-token loss over the window. Train with
    ``data = (ids, labels)`` to score only some tokens: ``labels`` has the shape of ``ids``, the
    token id where a token is scored and ``IGNORE`` (-100) elsewhere (padding included: pad on the
    right, where causal attention keeps real tokens from seeing it); the loss is the mean over the
    scored tokens of -log p(token | the tokens before it), see :func:`label_loss`.
    """

    def loss(self, state: TrainState, batch: Batch) -> torch.Tensor:
        if batch.y is None:
            return state.model(input_ids=batch.x, labels=batch.x, use_cache=False).loss
        return label_loss(state.model, batch.x, batch.y)


IGNORE = -100  # a label that is not scored (Hugging Face's ignore_index)


def label_loss(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of -log p(labels[r, t] | ids[r, :t]) over the scored positions (``labels != IGNORE``, t >= 1).

    Only the positions that predict a scored token go through the output layer (the vocabulary
    projection is the largest layer of a small LM), e.g. the one label token of a classification
    prompt."""
    from prunekit.evaluate.scorer import logits_at

    if labels.shape != ids.shape:
        raise PrunekitError(f"labels {tuple(labels.shape)} must have the shape of the ids {tuple(ids.shape)}")
    rows, cols = (labels[:, 1:] != IGNORE).nonzero(as_tuple=True)  # cols + 1 is scored, predicted at cols
    if len(rows) == 0:
        raise PrunekitError("no scored label (every label is IGNORE)")
    positions = sorted(set(cols.tolist()))
    logits = logits_at(model, ids[:, : positions[-1] + 1], positions)  # later tokens change no scored logit
    column = torch.tensor([positions.index(c) for c in cols.tolist()], device=logits.device)
    picked = logits[rows, column].float()
    return torch.nn.functional.cross_entropy(picked, labels[rows, cols + 1])


def answer_prompts(tokenizer, items) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiple-choice items (:class:`prunekit.evaluate.tasks.base.Item`) as training data for
    :class:`CausalLMLoss`: ``(ids, labels)``, each row the item's context and its right choice,
    tokenized as the scorer splits them (:func:`prunekit.evaluate.scorer.encode_pair`), padded on the
    right with the tokenizer's end-of-text token; the labels hold the choice's tokens and ``IGNORE``
    elsewhere. Training on them lowers exactly what the scorer reads: -log p(right choice | context)."""
    from prunekit.evaluate.scorer import encode_pair
    from prunekit.evaluate.tasks.base import DELIMITER

    if not items:
        raise PrunekitError("no items to train on")
    pairs = [encode_pair(tokenizer, item.context, DELIMITER + item.choices[item.label]) for item in items]
    width = max(len(head) + len(tail) for head, tail in pairs)
    pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    for row, (head, tail) in enumerate(pairs):
        ids[row, : len(head) + len(tail)] = torch.tensor(head + tail)
        labels[row, len(head): len(head) + len(tail)] = torch.tensor(tail)
    return ids, labels
