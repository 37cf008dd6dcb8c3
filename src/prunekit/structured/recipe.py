"""Structured recipes: the same structured prune from CLI flags, Python or a YAML/JSON file.

::

    structured:
      method: flap
      structure: mlp,heads      # or a list; blocks alone takes remove: N (or ratio)
      ratio: 0.2
      allocation: global        # uniform | global | blocks; default: the method's own
      round_to: 8
      options: {bias_compensation: true}
    calibration: {source: "brown:b-r", nsamples: 64, seqlen: 512, seed: 0}

Unknown keys and bad values are one-line ``ValueError``s naming the key and the choices. The
``calibration`` section is the one of :class:`prunekit.recipe.CalibrationConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from prunekit.core.errors import PrunekitError
from prunekit.recipe import (CalibrationConfig, check_integer, check_number, read_recipe_file, reject_unknown_keys,
                             short_repr)


@dataclass
class StructuredStep:
    method: str = "flap"  # a structured criterion (prunekit.structured.criteria.NAMES)
    structure: str | list[str] = "mlp,heads"  # mlp, heads, blocks (comma string or list)
    ratio: float | None = 0.2  # fraction of the structures' parameters removed
    remove: int | None = None  # blocks to remove (structure blocks)
    allocation: str | None = None  # uniform | global | blocks; None: the method's default
    round_to: int = 8  # kept MLP widths are multiples of this
    floor: float = 0.05  # global/blocks: every layer keeps at least this fraction of its units
    bias_compensation: bool | None = None  # None: the method's default (FLAP: on)
    options: dict = field(default_factory=dict)  # criterion options, e.g. {"beta": 0.5} for cfsp

    def __post_init__(self) -> None:
        from prunekit.structured.criteria import build_criterion
        from prunekit.structured.prune import ALLOCATIONS
        from prunekit.structured.cli import parse_structure

        if not isinstance(self.method, str):
            raise PrunekitError(f"structured method must be a name (a string), got {short_repr(self.method)}")
        if isinstance(self.structure, (list, tuple)) and all(isinstance(p, str) for p in self.structure):
            self.structure = ",".join(self.structure)
        if not isinstance(self.structure, str):
            raise PrunekitError(f"structure must be a comma list or a list of mlp, heads, blocks, got "
                                f"{short_repr(self.structure)}")
        parts = parse_structure(self.structure)
        if self.remove is not None:
            self.remove = check_integer(self.remove, "remove")
            if "blocks" not in parts:
                raise PrunekitError(f"remove {self.remove} applies only to structure blocks, but structure is "
                                    f"{self.structure!r}; add blocks or drop remove")
        if parts == ("blocks",) and self.remove is not None:
            self.ratio = None  # remove N blocks: the ratio would be ignored
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise PrunekitError(f"options must be a mapping of option names to values, got {short_repr(self.options)}")
        build_criterion(self.method, **self.options)  # unknown methods and options
        if self.ratio is not None:
            self.ratio = check_number(self.ratio, "ratio")
            if not 0.0 <= self.ratio < 1.0:
                raise PrunekitError(f"ratio {self.ratio} is outside [0, 1): it is the fraction of the structure's "
                                    "parameters removed")
        if self.allocation is not None and (not isinstance(self.allocation, str) or self.allocation not in ALLOCATIONS):
            raise PrunekitError(f"allocation {short_repr(self.allocation)} is unknown; choose from "
                                f"{', '.join(ALLOCATIONS)}")
        self.round_to = check_integer(self.round_to, "round_to", 1)
        self.floor = check_number(self.floor, "floor")
        if not 0.0 <= self.floor < 1.0:
            raise PrunekitError(f"floor must be in [0, 1), got {self.floor!r}")
        if self.bias_compensation is not None and not isinstance(self.bias_compensation, bool):
            raise PrunekitError(f"bias_compensation must be true, false or null, got {short_repr(self.bias_compensation)}")

    def kwargs(self) -> dict:
        """Keyword arguments of :func:`prunekit.structured.prune_structured`."""
        return {"method": self.method, "structure": self.structure, "ratio": self.ratio, "remove": self.remove,
                "allocation": self.allocation, "round_to": self.round_to, "floor": self.floor,
                "bias_compensation": self.bias_compensation, **self.options}


@dataclass
class StructuredRecipe:
    structured: StructuredStep = field(default_factory=StructuredStep)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StructuredRecipe:
        if not isinstance(data, dict):
            raise PrunekitError(f"a structured recipe must be a mapping, got {short_repr(data)}")
        reject_unknown_keys(data, cls, "structured recipe")
        step = data.get("structured", {})
        reject_unknown_keys(step, StructuredStep, "structured")
        calib = data.get("calibration", {})
        reject_unknown_keys(calib, CalibrationConfig, "calibration")
        return cls(StructuredStep(**step), CalibrationConfig(**calib))

    def apply(self, model, tokenizer=None, progress: bool = False, statistics=None):
        """Prune ``model`` in place; returns the :class:`~prunekit.structured.prune.StructuredResult`."""
        from prunekit.structured.prune import prune_structured

        c = self.calibration
        return prune_structured(model, calibration=c.source, tokenizer=tokenizer, nsamples=c.nsamples,
                                seqlen=c.seqlen, seed=c.seed, progress=progress, statistics=statistics,
                                **self.structured.kwargs())


def is_structured_recipe(path: str | Path | None) -> bool:
    """Whether the recipe file at ``path`` has a top-level ``structured`` section."""
    if not path or not Path(path).is_file():
        return False
    try:
        data = read_recipe_file(path)
    except Exception:  # noqa: BLE001 - a file that does not parse is not ours to judge here
        return False
    return isinstance(data, dict) and "structured" in data


def load_structured_recipe(path: str | Path) -> StructuredRecipe:
    """Read a structured recipe from a .yaml/.yml or .json file."""
    return StructuredRecipe.from_dict(read_recipe_file(path))
