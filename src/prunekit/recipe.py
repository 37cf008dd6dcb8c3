"""Recipes: the same configuration from CLI flags, Python dataclasses, or YAML/JSON.

A recipe is a list of pruning steps plus the calibration data they share::

    calibration: {source: brown, nsamples: 64, seqlen: 512, seed: 0}
    steps:
      - method: sparsegpt
        sparsity: 0.5
        pattern: unstructured
        allocation: owl
        options: {percdamp: 0.01}

Unknown keys and bad values are errors that name the key and the accepted choices. Recipe files
are plain data: YAML through the safe loader with no tags (``!!python/...``) and no aliases, at most
1 MB and 32 levels deep; every problem with a file is one line naming it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

from prunekit.core.masks import Pattern, check_sparsity, parse_pattern
from prunekit.core.errors import PrunekitError, unknown_choice
from prunekit.core.registry import METHODS
from prunekit.targets import validate_selectors

ALLOCATIONS = ("uniform", "global", "owl")
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few lines; a larger file is a mistake
MAX_RECIPE_DEPTH = 32  # recipes nest 3 levels deep; deeper is a mistake or an attack
MAX_INT = (1 << 31) - 1

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 40, 40, 40


def short_repr(value, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (values in error messages stay on one short line)."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_number(value, where: str) -> float:
    """A finite int or float (not a bool), as a float; a one-line error otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PrunekitError(f"{where} must be a number, got {short_repr(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise PrunekitError(f"{where} must be a finite number, got {short_repr(value)}")
    return number


def check_integer(value, where: str, minimum: int = 0) -> int:
    """An int (not a bool) in [minimum, 2**31 - 1]; a one-line error otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INT:
        raise PrunekitError(f"{where} must be an integer in [{minimum}, {MAX_INT}], got {short_repr(value)}")
    return value


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
        if not isinstance(self.method, str):
            raise PrunekitError(f"method must be a name (a string), got {short_repr(self.method)}")
        if not isinstance(self.options, dict):
            raise PrunekitError(f"options must be a mapping of option names to values, got {short_repr(self.options)}")
        self.method = METHODS.canonical(self.method)
        try:
            self.options = METHODS.check(self.method, self.options)  # option keys, types and ranges
        except (TypeError, OverflowError) as err:
            raise PrunekitError(f"options of method {self.method!r} are invalid: {short_repr(self.options)} "
                                f"({type(err).__name__}: {str(err)[:80]})") from None
        if self.pattern is None:
            self.pattern = METHODS.get(self.method).default_pattern
        if not isinstance(self.pattern, (str, Pattern)):
            hint = " (YAML reads an unquoted 2:4 as the number 124: quote it, '2:4')" if isinstance(
                self.pattern, int) and not isinstance(self.pattern, bool) else ""
            raise PrunekitError(f"pattern must be a string (unstructured, per-row or N:M such as '2:4'), got "
                                f"{short_repr(self.pattern)}{hint}")
        pattern = parse_pattern(self.pattern)
        if self.sparsity is None:
            self.sparsity = pattern.sparsity if pattern.sparsity is not None else 0.5
        self.sparsity = check_number(self.sparsity, "sparsity")
        self.sparsity = check_sparsity(self.sparsity)
        if pattern.sparsity is not None and abs(pattern.sparsity - self.sparsity) > 1e-9:
            raise ValueError(
                f"pattern {self.pattern} prunes {pattern.sparsity:g} of the weights but sparsity is {self.sparsity:g}; "
                "drop --sparsity or make them agree"
            )
        if not isinstance(self.allocation, str):
            raise PrunekitError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {short_repr(self.allocation)}")
        if self.allocation not in ALLOCATIONS:
            raise unknown_choice("allocation", self.allocation, ALLOCATIONS)
        if self.allocation != "uniform" and pattern.kind == "n:m":
            raise ValueError(f"allocation {self.allocation!r} needs per-layer ratios; it cannot be used with N:M")
        self.owl_lambda = check_number(self.owl_lambda, "owl_lambda")
        if not 0 <= self.owl_lambda < 1:
            raise PrunekitError(f"owl_lambda must be in [0, 1), got {self.owl_lambda!r}")
        self.owl_m = check_number(self.owl_m, "owl_m")
        if self.owl_m <= 0:
            raise PrunekitError(f"owl_m must be > 0 (an outlier is a score above owl_m x the mean), got {self.owl_m!r}")
        for key in ("targets", "ignore"):
            value = getattr(self, key)
            bad = [v for v in value if not isinstance(v, str) or not v] if isinstance(value, list) else [value]
            if bad:
                raise PrunekitError(f"{key} must be a list of class names or 're:<regex>' strings, got "
                                    f"{short_repr(bad[0] if isinstance(value, list) else value)}")
        if not self.targets:
            raise PrunekitError("targets is empty, so no layer would be pruned; give class names such as 'Linear' "
                                "or 're:<regex>'")
        validate_selectors(self.targets, "targets")
        validate_selectors(self.ignore, "ignore")
        self.seed = check_integer(self.seed, "seed")

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
        import torch

        source = self.source
        if not ((isinstance(source, str) and source) or isinstance(source, torch.Tensor)
                or (isinstance(source, (list, tuple)) and all(isinstance(s, str) for s in source))):
            raise PrunekitError(f"calibration.source must be 'brown', 'brown:<genres>' or a text file (Python: also a "
                                f"list of strings or a tensor of token ids), got {short_repr(source)}")
        for key in ("nsamples", "seqlen", "chunk_size"):
            check_integer(getattr(self, key), f"calibration.{key}", 1)
        check_integer(self.seed, "calibration.seed")


@dataclass
class Recipe:
    steps: list[PruneStep] = field(default_factory=lambda: [PruneStep()])
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.steps, list) or not self.steps or not all(isinstance(s, PruneStep) for s in self.steps):
            raise PrunekitError(f"a recipe needs a non-empty list of steps (PruneStep), got {short_repr(self.steps)}")
        if not isinstance(self.calibration, CalibrationConfig):
            raise PrunekitError(f"calibration must be a CalibrationConfig, got {short_repr(self.calibration)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        if not isinstance(data, dict):
            raise PrunekitError(f"a recipe must be a mapping with steps (and optionally calibration), got "
                                f"{short_repr(data)}")
        reject_unknown_keys(data, cls, "recipe")
        steps = data.get("steps", [{}])  # no steps key: the default step, as Recipe()
        if isinstance(steps, dict):
            steps = [steps]
        if not isinstance(steps, list) or not steps:
            raise PrunekitError(f"steps must be a non-empty list of steps (e.g. [{{method: wanda, sparsity: 0.5}}]), "
                                f"got {short_repr(steps)}")
        parsed = []
        for i, step in enumerate(steps):
            reject_unknown_keys(step, PruneStep, f"steps[{i}]")
            parsed.append(PruneStep(**step))
        calib = data.get("calibration", {})
        reject_unknown_keys(calib, CalibrationConfig, "calibration")
        return cls(steps=parsed, calibration=CalibrationConfig(**calib))


def reject_unknown_keys(data: dict, cls: type, where: str) -> None:
    """A one-line error naming the first key of ``data`` that is not a field of ``cls``."""
    if not isinstance(data, dict):
        raise PrunekitError(f"{where} must be a mapping, got {short_repr(data)}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in allowed:
            raise PrunekitError(f"unknown key {short_repr(key)} in {where} (choices: {', '.join(allowed)})")


def read_recipe_file(path: str | Path) -> dict:
    """The parsed content of a .json or YAML recipe file: a non-empty mapping of plain data.

    YAML goes through the safe loader and may not carry tags (``!!python/object``, ``!!binary``...)
    or aliases; files over 1 MB, nested deeper than 32 levels, not UTF-8, not parseable, empty or not
    a mapping are one-line errors naming the file."""
    path = Path(path)
    shown = str(path)
    if not path.is_file():
        raise PrunekitError(f"recipe file {shown!r} does not exist")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
        if len(raw) > MAX_RECIPE_BYTES:
            raise PrunekitError(f"recipe file {shown!r} is larger than {MAX_RECIPE_BYTES:,} bytes; a recipe is a "
                                "few lines")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PrunekitError(f"cannot read recipe file {shown!r}: {_cut(str(err), 120)}") from None
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    import yaml

    try:
        data = json.loads(text) if kind == "JSON" else _safe_yaml(text)
    except RecursionError:
        raise PrunekitError(f"recipe file {shown!r} is nested deeper than {MAX_RECIPE_DEPTH} levels") from None
    except (ValueError, yaml.YAMLError) as err:
        raise PrunekitError(f"recipe file {shown!r} is not valid {kind}: {_one_line(err)}") from None
    if _depth(data) > MAX_RECIPE_DEPTH:
        raise PrunekitError(f"recipe file {shown!r} is nested deeper than {MAX_RECIPE_DEPTH} levels")
    if data is None or data == {} or data == []:
        raise PrunekitError(f"recipe file {shown!r} is empty; give steps (and optionally calibration)")
    if not isinstance(data, dict):
        raise PrunekitError(f"recipe file {shown!r} must hold a mapping with steps (and optionally calibration), "
                            f"got {type(data).__name__} {short_repr(data, 40)}")
    return data


def _one_line(err: BaseException) -> str:
    """A YAML/JSON error as one line: the problem and where it is."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem:
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return _cut(str(problem), 120) + where
    lines = str(err).strip().splitlines()
    return _cut(lines[0] if lines else type(err).__name__, 160)


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_yaml(text: str):
    """``yaml.safe_load`` after a pass over the events (iterative, so depth is bounded before the
    recursive composer runs) that refuses tags, aliases and nesting beyond MAX_RECIPE_DEPTH."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise ValueError(f"YAML aliases (*{event.anchor}) are not allowed in a recipe")
        if getattr(event, "tag", None) is not None:
            raise ValueError(f"YAML tags such as {_cut(event.tag, 60)!r} are not allowed in a recipe")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_RECIPE_DEPTH:
                raise RecursionError
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return yaml.safe_load(text)


def _depth(value) -> int:
    """Nesting depth of lists and mappings (iterative; stops counting past MAX_RECIPE_DEPTH)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            level += 1
            deepest = max(deepest, level)
            if level <= MAX_RECIPE_DEPTH:
                stack.extend((v, level) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe from a .yaml/.yml or .json file."""
    return Recipe.from_dict(read_recipe_file(path))
