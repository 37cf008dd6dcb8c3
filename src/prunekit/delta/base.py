"""What every delta-pruning method shares: the per-layer contract.

A fine-tuned model differs from its base by a delta ``D = W_ft - W_base`` per weight. A delta method
turns ``D`` into a sparse delta (most entries zero, the kept ones possibly rescaled); the merged model
is ``W_base + method.prune(D, p, ctx)``. Methods are config dataclasses registered in
:data:`prunekit.core.registry.DELTA_METHODS`; ``needs`` names the calibration statistics of the
layer's inputs they read (``norms``, ``hessian``: :mod:`prunekit.core.stats`), collected by the core's
block runner on the fine-tuned model as it is being pruned. What a delta prune did is a
:class:`DeltaResult` of one :class:`DeltaLayerReport` per layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch

from prunekit.core.stats import LayerStats, check_needs


@dataclass
class DeltaContext:
    """What a delta method may use besides the delta: the layer's name, its input statistics and a
    generator seeded for this layer (same seed, same layer name: same random drops)."""

    name: str
    stats: LayerStats | None = None
    generator: torch.Generator | None = field(default=None, repr=False)
    factor: float | None = None  # set by a method: the factor its kept entries were rescaled by


class DeltaMethod:
    """A delta-pruning method: ``prune(delta, sparsity, ctx)`` returns the new (sparse) delta.

    ``sparsity`` (DARE's drop rate p) is the fraction of the delta's entries set to zero.
    ``global_factor`` methods leave one rescaling factor to the driver, which picks it for the whole
    model on the calibration text (:meth:`factor_grid` lists the candidates)."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()  # every statistic the method may read

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        check_needs(cls.needs, f"delta method {cls.__name__}")

    def statistics(self) -> frozenset[str]:
        """The statistics this configuration reads (a subset of ``needs``)."""
        return self.needs

    @property
    def global_factor(self) -> bool:
        """Whether the driver picks one rescaling factor for the whole model on the calibration text."""
        return False

    @property
    def needs_calibration(self) -> bool:
        return bool(self.statistics()) or self.global_factor

    def prune(self, delta: torch.Tensor, sparsity: float, ctx: DeltaContext) -> torch.Tensor:
        raise NotImplementedError

    def factor_grid(self, sparsity: float) -> list[float]:
        return [1.0]


@dataclass
class DeltaLayerReport:
    name: str
    shape: tuple[int, int]
    nonzero_before: int  # delta entries that are not zero before pruning
    nonzero_after: int
    factor: float | None = None  # the rescaling factor a layer-wise method chose


@dataclass
class DeltaResult:
    """What a delta prune did, per layer and in total."""

    method: str
    sparsity: float
    layers: list[DeltaLayerReport] = field(default_factory=list)
    factor: float | None = None  # the global rescaling factor, when the method chooses one
    factor_losses: dict = field(default_factory=dict)  # candidate factor -> calibration loss
    untargeted_changed: list[str] = field(default_factory=list)  # other tensors that differ from the base
    calibration: str = ""
    seconds: float = 0.0

    @property
    def delta_before(self) -> int:
        return sum(r.nonzero_before for r in self.layers)

    @property
    def delta_after(self) -> int:
        return sum(r.nonzero_after for r in self.layers)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(delta_before=self.delta_before, delta_after=self.delta_after)
        return data

    def summary(self) -> str:
        kept = self.delta_after / max(self.delta_before, 1)
        factor = f"; global factor {self.factor:.3g}" if self.factor is not None else ""
        layer_factors = [r.factor for r in self.layers if r.factor is not None and r.nonzero_before]
        if layer_factors:
            factor += (f"; layer factors {min(layer_factors):.3g}..{max(layer_factors):.3g} "
                       f"(DARE's 1/(1-p) = {1 / (1 - self.sparsity):.3g})")
        other = (f"; {len(self.untargeted_changed)} other tensors keep their whole delta"
                 if self.untargeted_changed else "")
        return (f"{self.method} p={self.sparsity:g}: {len(self.layers)} layers, {self.delta_after:,} of "
                f"{self.delta_before:,} nonzero delta entries kept ({kept:.2%}){factor}{other}; {self.seconds:.1f} s")


def random_drop(delta: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE's drop mask (True = dropped): each entry independently with probability ``p``."""
    return torch.rand(delta.shape, generator=generator, dtype=torch.float32) < p
