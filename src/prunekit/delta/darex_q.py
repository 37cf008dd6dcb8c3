"""DAREx-q: DARE's random drop with a corrected rescaling factor 1/q instead of 1/(1-p).

Deng et al. 2025, "DARE the Extreme: Revisiting Delta-Parameter Pruning for Fine-Tuned Models"
(ICLR): at large p (or with large deltas) the factor 1/(1-p) overshoots, and a factor chosen on
data recovers much of the loss. Two ways to choose it here:

* ``scope: layer`` -- one factor per layer, the one that best restores the layer's output change on
  the calibration inputs X: with K the kept (unscaled) delta entries and H = X^T X,
  ``s* = argmin_s ||s K X^T - D X^T||^2 = <K H, D> / <K H, K>`` (a closed form; the paper's
  unsupervised proxy is the same least-squares fit of the output change, on the last layer);
* ``scope: global`` -- one factor for the whole model, the candidate of lowest next-token loss on the
  calibration text (the text's own next tokens are the labels), from a geometric grid between 1 (no
  rescaling) and 1/(1-p) (DARE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.registry import DELTA_METHODS, option
from prunekit.delta.base import DeltaMethod, random_drop


@DELTA_METHODS.register("darex-q")
@dataclass
class DarexQ(DeltaMethod):
    """DARE's random drop, rescaled by a factor chosen on calibration data, per layer or global (Deng et al. 2025)."""

    scope: str = option("layer", "layer: per-layer least-squares factor on the layer's inputs; global: one factor "
                        "of lowest calibration loss", choices=("layer", "global"))
    grid: int = option(9, "global: number of candidate factors, geometric from 1 to 1/(1-p)", min=2, max=64)

    needs = frozenset({"hessian"})

    def statistics(self):  # the layer fit reads X^T X; the global search reads the model's loss instead
        return self.needs if self.scope == "layer" else frozenset()

    @property
    def global_factor(self):
        return self.scope == "global"

    def prune(self, delta, sparsity, ctx):
        kept = delta.masked_fill(random_drop(delta, sparsity, ctx.generator), 0.0)
        if self.global_factor:
            return kept  # the driver scales every layer by the chosen factor
        ctx.factor = layer_factor(kept, delta, ctx.stats.full_hessian(), 1.0 / (1.0 - sparsity))
        return kept * ctx.factor

    def factor_grid(self, sparsity):
        top = 1.0 / (1.0 - sparsity)
        return [top ** (k / (self.grid - 1)) for k in range(self.grid)]


def layer_factor(kept: torch.Tensor, delta: torch.Tensor, hessian: torch.Tensor, fallback: float) -> float:
    """``<K H, D> / <K H, K>``: the factor s minimizing ||(s K - D) X^T||^2 for H = X^T X (>= 0;
    ``fallback`` when nothing is kept or the inputs are all zero)."""
    kh = kept.double() @ hessian.double()
    denominator = float((kh * kept.double()).sum())
    if not denominator > 0:
        return fallback
    return max(float((kh * delta.double()).sum()) / denominator, 0.0)
