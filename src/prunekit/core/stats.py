"""What calibration data tells about a model: one statistics object, one per-run container, one
gradient collector.

Every method and criterion declares the statistics it reads as a frozenset of the names in
:data:`NEEDS`; the drivers collect exactly those:

* per layer (its calibration inputs X, tokens x in), in :class:`LayerStats`:
  ``norms`` (sum over tokens of X_j^2: Wanda, GBLM), ``hessian`` (X^T X: SparseGPT),
  ``moments`` (per-channel mean, variance and mean square, summed in float64: FLAP, CFSP, FLAP's
  bias compensation);
* per block: ``similarity``, the mean over tokens of cos(block input, block output) (ShortGPT's
  block influence is 1 minus it; CFSP's per-block budgets);
* per weight: ``gradients`` of the loss, reduced over the calibration samples as the method's
  ``gradient_reduction`` says (:func:`collect_gradients`).

The block runner (:mod:`prunekit.core.calibration`) fills the per-layer and per-block statistics
in one pass; :class:`ModelStats` holds one run's statistics by layer name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from prunekit.core.errors import PrunekitError
from prunekit.core.families import as_out_in

LAYER_NEEDS = frozenset({"norms", "hessian", "moments"})
BLOCK_NEEDS = frozenset({"similarity"})
NEEDS = LAYER_NEEDS | BLOCK_NEEDS | {"gradients"}
REDUCTIONS = ("mean", "l2")


def check_needs(needs: frozenset[str], owner: str, gradient_reduction: str = "mean") -> frozenset[str]:
    """``needs`` unchanged, or an error naming the unknown statistic (or reduction) and the known ones.

    Methods and criteria call this when their class is defined, so a misspelt declaration fails
    at import, not halfway through a calibration run."""
    unknown = sorted(set(needs) - NEEDS)
    if unknown:
        raise PrunekitError(f"{owner} needs unknown statistics {unknown}; known: {', '.join(sorted(NEEDS))}")
    if gradient_reduction not in REDUCTIONS:
        raise PrunekitError(f"{owner} asks for gradient reduction {gradient_reduction!r}; "
                            f"choose from {', '.join(REDUCTIONS)}")
    return frozenset(needs)


@dataclass
class LayerStats:
    """Running statistics of a layer's calibration inputs X (tokens x in), summed in ``dtype``.

    ``sq_norms[j]`` = sum over tokens of X[:, j]^2 (Wanda's ||X_j||^2); ``sums[j]`` = sum over tokens
    of X[:, j] (with ``want_sums``); ``full_hessian()`` = X^T X (SparseGPT's H, before the 2/n
    scaling that cancels in the solver). X^T X is symmetric, so only its upper block-triangle is
    accumulated (``gram_upper``): 8 row blocks took ~59% of a full product's time, which matters
    because the Hessians cost almost as much as the calibration forward.

    One-shot methods sum in float32 (their masks are pinned to it); the channel moments sum in
    float64, because a variance from float32 sums of squares over many tokens loses its digits.
    """

    in_features: int
    want_hessian: bool = False
    want_sums: bool = False
    dtype: torch.dtype = torch.float32
    tokens: int = 0
    samples: int = 0
    sq_norms: torch.Tensor | None = None
    sums: torch.Tensor | None = None
    gram_upper: torch.Tensor | None = None  # X^T X on and above the diagonal blocks (below: see full_hessian)
    row_blocks: int = 8
    _mirrored: bool = field(default=False, repr=False)  # gram_upper is the whole symmetric X^T X
    last_reader: bool = False  # set by the runner: the layer now handed these statistics is the last to read them

    @classmethod
    def for_needs(cls, in_features: int, needs: frozenset[str]) -> LayerStats:
        """The statistics object that collects what ``needs`` asks of one layer."""
        moments = "moments" in needs
        return cls(in_features, want_hessian="hessian" in needs, want_sums=moments,
                   dtype=torch.float64 if moments else torch.float32)

    def add(self, x: torch.Tensor, samples: int) -> None:
        x = x.reshape(-1, self.in_features).to(self.dtype)
        if self.sq_norms is None:
            self.sq_norms = torch.zeros(self.in_features, dtype=self.dtype, device=x.device)
        if self.want_sums:
            if self.sums is None:
                self.sums = torch.zeros(self.in_features, dtype=self.dtype, device=x.device)
            self.sums += x.sum(dim=0)
        self.sq_norms += x.pow(2).sum(dim=0)
        if self.want_hessian:
            self._add_gram(x)
            self._mirrored = False
        self.tokens += x.shape[0]
        self.samples += samples

    def _add_gram(self, x: torch.Tensor) -> None:
        d = self.in_features
        if self.gram_upper is None:
            self.gram_upper = torch.zeros(d, d, dtype=self.dtype, device=x.device)
        step = -(-d // self.row_blocks)
        for i in range(0, d, step):  # row block i, columns i.. : H[i:i+step, i:] += X_i^T X_{i:}
            self.gram_upper[i : i + step, i:].addmm_(x[:, i : i + step].t(), x[:, i:])

    def full_hessian(self) -> torch.Tensor:
        """X^T X, exactly symmetric: the statistics' own matrix, completed in place (the upper triangle
        mirrored below the diagonal), so a wide layer's Hessian exists once, not twice or three times
        (8960 inputs: 321 MB each in float32). Read it; do not write to it."""
        if not self._mirrored:
            g, d = self.gram_upper, self.in_features
            step = -(-d // self.row_blocks)
            for i in range(0, d, step):
                block = g[i : i + step, i : i + step]
                block.copy_(block.triu() + block.triu(1).t())
                g[i : i + step, :i] = g[:i, i : i + step].t()
            self._mirrored = True
        return self.gram_upper

    def take_hessian(self) -> torch.Tensor:
        """X^T X for a reader that overwrites it: the statistics' own matrix, which they let go of, when the
        runner marked this reader the last (``last_reader``, known to the two-pass runner); else a copy."""
        hessian = self.full_hessian()
        if self.last_reader:
            self.gram_upper = None
            return hessian
        return hessian.clone()

    def column_norms(self) -> torch.Tensor:
        """sqrt of the per-sample mean of ||X_j||^2, the activation norm used by Wanda and GBLM."""
        return (self.sq_norms / max(self.samples, 1)).sqrt()

    @property
    def mean(self) -> torch.Tensor:
        """Mean of each input channel over tokens (needs ``want_sums``)."""
        return self.sums / max(self.tokens, 1)

    @property
    def mean_square(self) -> torch.Tensor:
        """Mean of X_j^2 over tokens."""
        return self.sq_norms / max(self.tokens, 1)

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased sample variance of each input channel over tokens (needs ``want_sums``)."""
        n = max(self.tokens, 2)
        return ((self.sq_norms - self.sums.pow(2) / n) / (n - 1)).clamp_min(0.0)


class Gradient(NamedTuple):
    """A layer's reduced gradient: ``weight`` as (out x in), ``bias`` or None."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None


@dataclass
class ModelStats:
    """One calibration run's statistics: per-layer :class:`LayerStats` by module name, the block
    similarity list (one float per block), reduced gradients by module name, and which of
    :data:`NEEDS` have been collected (so a later step can reuse them on the same dense model)."""

    layers: dict[str, LayerStats] = field(default_factory=dict)
    block_similarity: list[float] = field(default_factory=list)
    gradients: dict[str, Gradient] = field(default_factory=dict)
    collected: set[str] = field(default_factory=set)
    windows: int = 0

    def missing(self, needs: frozenset[str]) -> frozenset[str]:
        return frozenset(needs) - self.collected


# ------------------------------------------------------------------ gradients

def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of a causal LM on a batch of token windows (padding, ``PAD``, is neither
    attended to nor predicted)."""
    from prunekit.core.data_sources import split_padding

    ids, mask = split_padding(ids)
    if mask is None:
        return model(input_ids=ids, labels=ids, use_cache=False).loss
    return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), use_cache=False).loss


def _row(samples, i: int, device):
    if isinstance(samples, (tuple, list)):
        return tuple(s[i : i + 1].to(device) for s in samples)
    return samples[i : i + 1].to(device)


def collect_gradients(model: nn.Module, samples, layers: dict[str, nn.Module], reduction: str = "mean",
                      loss: Callable | None = None, biases: bool = False,
                      progress: bool = False) -> dict[str, Gradient]:
    """Per-sample gradients of the loss w.r.t. each layer's weight (and bias), reduced over samples.

    ``samples`` is a LongTensor of token windows (one row = one sample, loss :func:`lm_loss`) or a
    tuple of tensors ``(x, y)`` fed one row at a time to ``loss(model, (x_i, y_i))``. For each
    sample i, g_i = dL_i/dW on the current weights (model in eval mode, only the targets require
    grad, the ``.grad`` fields untouched). Reductions over the n samples:

    * ``"mean"``: (1/n) sum_i g_i, the gradient of the mean loss (LLM-Pruner's Taylor term);
    * ``"l2"``: sqrt(sum_i g_i^2) element-wise, the L2 norm over samples (GBLM's G, Das et al. 2023,
      eq. 2; it is not an RMS: there is no 1/n).

    Gradients are summed in float32 and returned laid out (out x in) like ``weight_view``.
    """
    if reduction not in REDUCTIONS:
        raise PrunekitError(f"gradient reduction {reduction!r} is unknown; choose from {', '.join(REDUCTIONS)}")
    loss = loss or lm_loss
    params = [(name, kind, p) for name, m in layers.items()
              for kind, p in (("weight", m.weight), ("bias", m.bias if biases else None)) if p is not None]
    acc = [torch.zeros_like(p, dtype=torch.float32) for _, _, p in params]
    n = len(samples[0]) if isinstance(samples, (tuple, list)) else len(samples)
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for _, _, p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for i in tqdm(range(n), desc="gradients", disable=not progress, leave=False):
                value = loss(model, _row(samples, i, device))
                grads = torch.autograd.grad(value, [p for _, _, p in params], allow_unused=True)
                for a, g in zip(acc, grads):
                    if g is not None:
                        a += g.float().pow(2) if reduction == "l2" else g.float() / n
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    if reduction == "l2":
        acc = [a.sqrt_() for a in acc]
    found = {(name, kind): a for (name, kind, _), a in zip(params, acc)}
    return {name: Gradient(as_out_in(m, found[name, "weight"]), found.get((name, "bias")))
            for name, m in layers.items()}
