"""Recipes: the same configuration from CLI flags, Python dataclasses, or YAML/JSON.

A recipe is a list of pruning steps plus the calibration data they share::

    calibration: {source: brown, nsamples: 64, seqlen: 512, seed: 0}
    steps:
      - method: sparsegpt
        sparsity: 0.5
        pattern: unstructured
        allocation: owl
        options: {percdamp: 0.01}

Unknown keys and bad values are errors that name the key and the accepted choices.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from prunekit.core.masks import check_sparsity, parse_pattern
from prunekit.core.errors import unknown_choice
from prunekit.core.registry import METHODS
from prunekit.targets import validate_selectors

ALLOCATIONS = ("uniform", "global", "owl")


@dataclass
class PruneStep:
    method: str = "wanda"  # a registered method name (see `prunekit prune --help`)
    sparsity: float | None = None  # fraction pruned per layer; None: N/M for N:M patterns, else 0.5
    pattern: str | None = None  # unstructured | per-row | N:M; None: the method's default
    allocation: str = "uniform"  # uniform | global (one magnitude threshold) | owl (outlier-weighted)
    owl_lambda: float = 0.08  # OWL: per-block sparsities span [s - lambda, s + lambda]
    owl_m: float = 5.0  # OWL: an outlier is a Wanda score above m x the layer mean
    targets: list[str] = field(default_factory=lambda: ["Linear"])  # class names or "re:<regex>"
    ignore: list[str] = field(default_factory=list)  # same syntax; wins over targets
    options: dict = field(default_factory=dict)  # method-specific, e.g. {"percdamp": 0.01}
    seed: int = 0  # for random scores

    def __post_init__(self) -> None:
        self.method = METHODS.canonical(self.method)
        self.options = METHODS.check(self.method, self.options)  # option keys, types and ranges
        if self.pattern is None:
            self.pattern = METHODS.get(self.method).default_pattern
        pattern = parse_pattern(self.pattern)
        if self.sparsity is None:
            self.sparsity = pattern.sparsity if pattern.sparsity is not None else 0.5
        self.sparsity = check_sparsity(self.sparsity)
        if pattern.sparsity is not None and abs(pattern.sparsity - self.sparsity) > 1e-9:
            raise ValueError(
                f"pattern {self.pattern} prunes {pattern.sparsity:g} of the weights but sparsity is {self.sparsity:g}; "
                "drop --sparsity or make them agree"
            )
        if self.allocation not in ALLOCATIONS:
            raise unknown_choice("allocation", self.allocation, ALLOCATIONS)
        if self.allocation != "uniform" and pattern.kind == "n:m":
            raise ValueError(f"allocation {self.allocation!r} needs per-layer ratios; it cannot be used with N:M")
        if not 0 <= self.owl_lambda < 1:
            raise ValueError(f"owl_lambda must be in [0, 1), got {self.owl_lambda!r}")
        validate_selectors(self.targets, "targets")
        validate_selectors(self.ignore, "ignore")

    def build(self):
        return METHODS.build(self.method, self.options)


@dataclass
class CalibrationConfig:
    source: str = "brown"  # brown | brown:<genres> | a text file (Python: also list of str / token tensor)
    nsamples: int = 64  # number of windows
    seqlen: int = 512  # tokens per window
    seed: int = 0  # window start offsets are drawn with this seed
    chunk_size: int = 8  # windows per forward chunk in the block runner

    def __post_init__(self) -> None:
        for key in ("nsamples", "seqlen", "chunk_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"calibration.{key} must be a positive integer, got {value!r}")


@dataclass
class Recipe:
    steps: list[PruneStep] = field(default_factory=lambda: [PruneStep()])
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        if not isinstance(data, dict):
            raise ValueError(f"a recipe must be a mapping, got {type(data).__name__}")
        reject_unknown_keys(data, cls, "recipe")
        steps = data.get("steps", [{}])
        if isinstance(steps, dict):
            steps = [steps]
        parsed = []
        for i, step in enumerate(steps):
            reject_unknown_keys(step, PruneStep, f"steps[{i}]")
            parsed.append(PruneStep(**step))
        calib = data.get("calibration", {})
        reject_unknown_keys(calib, CalibrationConfig, "calibration")
        return cls(steps=parsed, calibration=CalibrationConfig(**calib))


def reject_unknown_keys(data: dict, cls: type, where: str) -> None:
    """A one-line ValueError naming the first key of ``data`` that is not a field of ``cls``."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {data!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} in {where} (choices: {', '.join(allowed)})")


def read_recipe_file(path: str | Path):
    """The parsed content of a .json or YAML recipe file (``FileNotFoundError`` naming a missing one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe from a .yaml/.yml or .json file."""
    return Recipe.from_dict(read_recipe_file(path) or {})
