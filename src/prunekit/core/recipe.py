"""One recipe format for every capability: the calibration data and a list of typed steps.

::

    calibration: {source: brown, nsamples: 64, seqlen: 512, seed: 0}
    steps:
      - kind: oneshot            # the default kind
        method: sparsegpt
        sparsity: 0.5
        allocation: owl
        options: {percdamp: 0.01}

A step's ``kind`` names an entry of :data:`~prunekit.core.registry.STEPS` (``oneshot``,
``structured``, ``training``, ``selection``): a config dataclass owned by its capability package.
Flags, Python dataclasses and YAML/JSON are the same configuration: every key is checked against
the step's fields (type and range) by the registry's checker, unknown keys name the nearest key and
the choices, and every error is one :class:`~prunekit.core.errors.PrunekitError` line.

The ``prunekit.json`` written next to every output is itself a recipe: its ``calibration`` and
``steps`` are what ran, and its provenance keys (:data:`PROVENANCE_KEYS`: version, source, result,
layer shapes...) are ignored when it is read back, so ``prunekit prune --recipe OUT/prunekit.json``
repeats the run. Recipe files are plain data: YAML through the safe loader with no tags and no
aliases, at most 1 MB and 32 levels deep.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from prunekit.core.errors import PrunekitError, short_repr, unknown_choice
from prunekit.core.registry import STEPS, check_fields, option

RUNNERS = ("lockstep", "two-pass", "dense")  # block runner schedules (core.calibration)
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")  # calibration compute dtypes (core.calibration)

# what an output's prunekit.json holds besides its recipe; ignored when it is read as a recipe
PROVENANCE_KEYS = ("prunekit_version", "source_model", "result", "layer_shapes", "speed", "demo")
MAX_BYTES = 1 << 20  # a recipe is a few lines; a larger file is a mistake
MAX_DEPTH = 32  # recipes nest 3 levels deep; deeper is a mistake or an attack


class Step:
    """Base of the recipe steps: a config dataclass registered in ``STEPS`` under its kind.

    ``__post_init__`` checks every field against its annotation and ``option(...)`` range, so a step
    built in Python is checked exactly like one read from a file; subclasses add the checks that
    relate fields to each other in :meth:`validate`."""

    name: ClassVar[str]
    key_aliases: ClassVar[dict[str, str]] = {}  # old spellings users depend on -> field name
    # a flag that changes the key on the left drops these keys of the recipe's step (core.cli_args)
    replaces: ClassVar[dict[str, tuple[str, ...]]] = {"method": ("options",), "selector": ("options",)}

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        for key, value in check_fields(type(self), values, f"{self.name} step", noun="key").items():
            setattr(self, key, value)
        self.validate()

    def validate(self) -> None:
        """Checks across fields (e.g. a pattern that implies a sparsity); one-line errors."""

    def to_dict(self) -> dict:
        return {"kind": self.name, **dataclasses.asdict(self)}


@dataclass
class CalibrationConfig:
    """The calibration text shared by a recipe's steps."""

    source: Any = option("brown", "brown | brown:<genres> | a text file (Python: also a list of strings, a "
                         "datasets.Dataset, a BatchEncoding, a DataLoader of dicts or a tensor of token ids)")
    nsamples: int = option(64, "number of calibration windows", min=1)
    seqlen: int = option(512, "tokens per window", min=2)
    seed: int = option(0, "window start offsets are drawn with this seed", min=0)
    packing: bool | None = option(None, "samples (strings, dataset rows): false (default) makes one window of each "
                                  "sample, its real tokens only (padding is masked); true joins them into one "
                                  "stream cut into nsamples windows of seqlen tokens. Text sources are streams")
    chunk_size: int = option(8, "windows per forward chunk in the block runner", min=1)
    runner: str = option("lockstep", "lockstep: one forward pass, each layer calibrated on the pruned layers before "
                         "it, holding a block's activations for every window | two-pass: calibrate the dense block, "
                         "prune it, run it again (holds one chunk's activations; about twice the time) | dense: one "
                         "pass, every layer calibrated on the dense model's activations (one chunk's activations; "
                         "errors of earlier pruned blocks are not propagated)",
                         choices=RUNNERS)
    compute_dtype: str = option("auto", "dtype of the activations and of each block while it is calibrated; the "
                                "weights are saved in their own. auto: float32 for SparseGPT on 16-bit weights, "
                                "else the weights' dtype", choices=COMPUTE_DTYPES)

    def __post_init__(self) -> None:
        import torch

        source = self.source
        if isinstance(source, Path):
            source = self.source = str(source)
        if source is None or (isinstance(source, str) and not source) or isinstance(source, (int, float, bool)):
            raise PrunekitError(f"calibration.source must be 'brown', 'brown:<genres>' or a text file (Python: also a "
                                f"list of strings, a dataset, a BatchEncoding, a DataLoader or a tensor of token ids), "
                                f"got {short_repr(source)}")
        if torch.is_tensor(source) and source.dtype.is_floating_point:
            raise PrunekitError(f"calibration.source tensor must hold token ids (integers), got {source.dtype}")
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}
        for key, value in check_fields(type(self), values, "calibration", noun="key").items():
            setattr(self, key, value)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # no deep copy of a dataset
        if not isinstance(self.source, str):
            from prunekit.core.data_sources import describe_source

            data["source"] = describe_source(self.source)  # Python-only sources are not repeatable from a file
        return data


@dataclass
class Recipe:
    """What to do (``steps``, run in order) and with which calibration data."""

    steps: list = field(default_factory=list)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.steps, list) or not self.steps or not all(isinstance(s, Step) for s in self.steps):
            raise PrunekitError(f"a recipe needs a non-empty list of steps, got {short_repr(self.steps)}")
        if not isinstance(self.calibration, CalibrationConfig):
            raise PrunekitError(f"calibration must be a CalibrationConfig, got {short_repr(self.calibration)}")

    def to_dict(self) -> dict:
        return {"calibration": self.calibration.to_dict(), "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        if not isinstance(data, dict):
            raise PrunekitError(f"a recipe must be a mapping with steps (and optionally calibration), "
                                f"got {short_repr(data)}")
        if "structured" in data and "steps" not in data:
            raise PrunekitError("the 'structured' section is now a step: write steps: [{kind: structured, method: "
                                "flap, ...}]")
        check_keys(data, ("steps", "calibration", *PROVENANCE_KEYS), "recipe")
        calibration = data.get("calibration") or {}
        if not isinstance(calibration, dict):
            raise PrunekitError(f"calibration must be a mapping, got {short_repr(calibration)}")
        check_keys(calibration, [f.name for f in dataclasses.fields(CalibrationConfig)], "calibration")
        calibration = CalibrationConfig(**calibration)
        steps = data.get("steps")
        if isinstance(steps, dict):
            steps = [steps]
        if not isinstance(steps, list) or not steps:
            raise PrunekitError(f"steps must be a non-empty list of steps (e.g. [{{method: wanda, sparsity: 0.5}}]), "
                                f"got {short_repr(steps)}")
        return cls([parse_step(s, f"steps[{i}]") for i, s in enumerate(steps)], calibration)

    def kinds(self) -> list[str]:
        """The kinds of the steps, in order (e.g. ``["oneshot"]``)."""
        return [s.name for s in self.steps]


def parse_step(data: Any, where: str = "") -> Step:
    """A step dataclass from its mapping (``kind`` selects the dataclass; default ``oneshot``).
    ``where`` says where the step is in messages (e.g. ``steps[0]``)."""
    if not isinstance(data, dict):
        raise PrunekitError(f"{where or 'a step'} must be a mapping, got {short_repr(data)}")
    kind = STEPS.canonical(data.get("kind", "oneshot"))
    cls = STEPS.get(kind)
    label = f"{where} ({kind} step)" if where else f"{kind} step"
    values = {}
    for key, value in data.items():
        if key == "kind":
            continue
        key = cls.key_aliases.get(key, key)
        if key in values:
            raise PrunekitError(f"{label} gives {key!r} twice (once by an old spelling); keep one")
        values[key] = value
    return cls(**check_fields(cls, values, label, noun="key"))


def check_keys(data: dict, allowed, where: str) -> None:
    """A one-line error naming the first key of ``data`` not in ``allowed`` (and the nearest one)."""
    for key in data:
        if key not in allowed:
            raise unknown_choice("key", key, allowed, where=where)


# ------------------------------------------------------------------ command-line values

def parse_value(text: str) -> Any:
    """A flag's text as a value: JSON where it is JSON (numbers, true/false/null, lists, mappings),
    else the text itself (``wanda``, ``brown:a``)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def parse_options(items: list[str] | None, flag: str = "--option") -> dict:
    """``["key=value", ...]`` (repeated ``--option`` flags) as a mapping, values through :func:`parse_value`."""
    options = {}
    for text in items or []:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise PrunekitError(f"{flag} expects key=value, got {short_repr(text)}")
        options[key] = parse_value(value)
    return options


# ------------------------------------------------------------------ files

def read_recipe_file(path: str | Path) -> dict:
    """The parsed content of a .json or YAML recipe file: a non-empty mapping of plain data.

    YAML goes through the safe loader and may not carry tags (``!!python/object``, ``!!binary``...)
    or aliases; files over 1 MB, nested deeper than 32 levels, not UTF-8, not parseable, empty or not
    a mapping are one-line errors naming the file."""
    from prunekit.core.io import read_small_text

    path = Path(path)
    shown = str(path)
    text = read_small_text(path, "recipe file", MAX_BYTES, "; a recipe is a few lines")
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    import yaml

    try:
        data = json.loads(text) if kind == "JSON" else _safe_yaml(text)
    except RecursionError:
        raise PrunekitError(f"recipe file {shown!r} is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, yaml.YAMLError) as err:
        raise PrunekitError(f"recipe file {shown!r} is not valid {kind}: {_one_line(err)}") from None
    if _depth(data) > MAX_DEPTH:
        raise PrunekitError(f"recipe file {shown!r} is nested deeper than {MAX_DEPTH} levels")
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
    recursive composer runs) that refuses tags, aliases and nesting beyond MAX_DEPTH."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise PrunekitError(f"YAML aliases (*{event.anchor}) are not allowed in a recipe")
        if getattr(event, "tag", None) is not None:
            raise PrunekitError(f"YAML tags such as {_cut(event.tag, 60)!r} are not allowed in a recipe")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecursionError
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return yaml.safe_load(text)


def _depth(value) -> int:
    """Nesting depth of lists and mappings (iterative; stops counting past MAX_DEPTH)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            level += 1
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((v, level) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe (or an output's ``prunekit.json``) from a .yaml/.yml or .json file."""
    return Recipe.from_dict(read_recipe_file(path))
