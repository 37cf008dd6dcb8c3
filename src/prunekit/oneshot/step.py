"""The one-shot step of a recipe (``kind: oneshot``, the default kind)."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.core.allocation import check_owl_sparsity
from prunekit.core.errors import PrunekitError, short_repr, unknown_choice
from prunekit.core.masks import check_sparsity, parse_pattern
from prunekit.core.recipe import Step
from prunekit.core.registry import METHODS, STEPS, option
from prunekit.core.targets import validate_selectors

ALLOCATIONS = ("uniform", "global", "owl")  # the core allocations that spread weight sparsity over layers


@STEPS.register("oneshot")
@dataclass
class PruneStep(Step):
    """Prune weights of a trained model in one shot (magnitude, Wanda, SparseGPT, GBLM ...)."""

    # a new method brings its own options and pattern; a new pattern its own sparsity (N/M)
    replaces = {"method": ("options", "pattern"), "pattern": ("sparsity",)}

    method: str = option("wanda", "a registered one-shot method (see `prunekit prune --help`)")
    sparsity: float | None = option(None, "fraction of weights pruned per layer; default N/M for N:M, else 0.5",
                                    min=0, below=1)
    pattern: str | None = option(None, "unstructured | per-row | N:M such as '2:4'; default: the method's own")
    allocation: str = option("uniform", "uniform | global (one |W| threshold) | owl (outlier-weighted)",
                             choices=ALLOCATIONS)
    owl_lambda: float = option(0.08, "OWL: per-block sparsities span [s - lambda, s + lambda]", min=0, below=1)
    owl_m: float = option(5.0, "OWL: an outlier is a Wanda score above m x the layer mean", above=0)
    targets: list[str] = option(default_factory=lambda: ["Linear"], help="class names or 're:<regex>'")
    ignore: list[str] = option(default_factory=list, help="class names or 're:<regex>'; wins over targets")
    options: dict = option(default_factory=dict, help="method options, e.g. {percdamp: 0.01}")
    seed: int = option(0, "seed of random scores", min=0)

    def validate(self) -> None:
        self.method = METHODS.canonical(self.method)
        self.options = METHODS.check(self.method, self.options)  # option keys, types and ranges
        if self.pattern is None:
            self.pattern = METHODS.get(self.method).default_pattern
        pattern = parse_pattern(self.pattern)
        if self.sparsity is None:
            self.sparsity = pattern.sparsity if pattern.sparsity is not None else 0.5
        self.sparsity = check_sparsity(self.sparsity)
        if pattern.sparsity is not None and abs(pattern.sparsity - self.sparsity) > 1e-9:
            raise PrunekitError(f"pattern {self.pattern} prunes {pattern.sparsity:g} of the weights but sparsity is "
                                f"{self.sparsity:g}; drop --sparsity or make them agree")
        if self.allocation not in ALLOCATIONS:
            raise unknown_choice("allocation", self.allocation, ALLOCATIONS)
        if self.allocation != "uniform" and pattern.kind == "n:m":
            raise PrunekitError(f"allocation {self.allocation!r} needs per-layer ratios; it cannot be used with N:M")
        if self.allocation == "owl":
            check_owl_sparsity(self.sparsity)
        if not self.targets or not all(self.targets):
            raise PrunekitError(f"targets is empty or has an empty name ({short_repr(self.targets)}), so no layer "
                                "would be pruned; give class names such as 'Linear' or 're:<regex>'")
        validate_selectors(self.targets, "targets")
        validate_selectors(self.ignore, "ignore")

    def build(self):
        """The method instance with its checked options."""
        return METHODS.build(self.method, self.options)

    def run(self, session):
        """Prune the session's model (:func:`prunekit.oneshot.prune.run_step`)."""
        from prunekit.oneshot.prune import run_step

        return run_step(self, session)
