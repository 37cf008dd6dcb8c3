"""One registry for every pluggable piece: one-shot methods, structured criteria, training criteria and
schedules, allocations, data scores, data selectors and recipe steps.

An entry is a config dataclass registered under a name::

    @METHODS.register("sparsegpt")
    @dataclass
    class SparseGPT(Method):
        percdamp: float = option(0.01, "dampening, as a fraction of the mean Hessian diagonal", min=0, max=1)
        blocksize: int = option(128, "columns solved together", min=1)

``METHODS.build("sparsegpt", {"blocksize": 0})`` checks every option against the field's type and
range before anything runs and raises a one-line :class:`PrunekitError` naming the key, the value
and what is accepted; an unknown name or key suggests the nearest one. CLI choices, ``--help``
texts and the docs tables are read from the registries (:meth:`Registry.describe`).

The built-in entries of a kind are registered when their package is imported; a registry imports
its ``builtin`` packages (by name, on first use), so the core never imports a capability package
at import time.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

from prunekit.core.errors import PrunekitError, short_repr, unknown_choice


def option(default: Any = dataclasses.MISSING, help: str = "", *, min: float | None = None,
           max: float | None = None, below: float | None = None, above: float | None = None,
           choices: tuple | None = None, default_factory: Callable | None = None) -> Any:
    """A dataclass field with a help text and an accepted range.

    ``min``/``max`` are inclusive bounds, ``above``/``below`` exclusive ones; ``choices`` is a closed
    set of values. The type comes from the field's annotation."""
    meta = {"help": help, "min": min, "max": max, "below": below, "above": above, "choices": choices}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ------------------------------------------------------------------ checking one value

def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return f"a list of ({_type_name(args[0])})" if args else "a list"
    if origin is dict:
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _matches(value: Any, hint: Any) -> tuple[bool, Any]:
    """(does ``value`` fit the annotation ``hint``, the value converted to it)."""
    if hint is Any or hint is object:
        return True, value
    if hint is type(None):
        return value is None, value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            ok, converted = _matches(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(hint), value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not args:
            return True, list(value)
        converted = []
        for item in value:
            ok, item = _matches(item, args[0])
            if not ok:
                return False, value
            converted.append(item)
        return True, converted
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:  # not a bool; and within int64, where torch and numpy can take it
        return isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < (1 << 63), value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        try:
            return math.isfinite(value), float(value)
        except OverflowError:  # an int too large for a float
            return False, value
    if hint is str:
        return isinstance(value, str), value
    if isinstance(hint, type):
        return isinstance(value, hint), value
    return True, value


def check_value(value: Any, hint: Any, meta: typing.Mapping, where: str) -> Any:
    """``value`` converted to ``hint`` and checked against the field's range, or a one-line error."""
    ok, value = _matches(value, hint)
    if not ok:
        quote = " (YAML reads an unquoted 2:4 as the number 124: quote it, '2:4')" if (
            isinstance(value, int) and "a string" in _type_name(hint)) else ""
        raise PrunekitError(f"{where} must be {_type_name(hint)}, got {short_repr(value)}{quote}")
    if value is None:
        return value
    choices = meta.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PrunekitError(f"{where} must be one of {', '.join(map(repr, choices))}, got {short_repr(value)}{hint}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not _in_range(value, meta):
        raise PrunekitError(f"{where} must be {_range_text(meta)}, got {short_repr(value)}")
    return value


def _in_range(value: float, meta: typing.Mapping) -> bool:
    return ((meta.get("min") is None or value >= meta["min"]) and (meta.get("max") is None or value <= meta["max"])
            and (meta.get("above") is None or value > meta["above"])
            and (meta.get("below") is None or value < meta["below"]))


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _range_text(meta: typing.Mapping) -> str:
    """``in [0, 1)``, ``>= 1``, ``> 0`` ... from a field's bounds."""
    low = f"[{_number(meta['min'])}" if meta.get("min") is not None else (
        f"({_number(meta['above'])}" if meta.get("above") is not None else None)
    high = f"{_number(meta['max'])}]" if meta.get("max") is not None else (
        f"{_number(meta['below'])})" if meta.get("below") is not None else None)
    if low and high:
        return f"in {low}, {high}"
    if low:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    return ("<= " if high[-1] == "]" else "< ") + high[:-1]


def check_fields(cls: type, data: typing.Mapping, where: str, noun: str = "option") -> dict:
    """``data`` checked against the dataclass ``cls``: unknown keys (nearest suggested), types, ranges.

    Errors read "unknown <noun> 'x' of <where>; did you mean ...", "<noun> 'x' of <where> must be ...".
    Returns the converted values (ints given for float fields become floats)."""
    if not isinstance(data, typing.Mapping):
        raise PrunekitError(f"the {noun}s of {where} must be a mapping, got {short_repr(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in data.items():
        if key not in fields:
            raise unknown_choice(noun, key, fields, where=where)
        checked[key] = check_value(value, hints.get(key, Any), fields[key].metadata, f"{key} ({where})")
    return checked


# ------------------------------------------------------------------ the registry

@dataclasses.dataclass(frozen=True)
class OptionInfo:
    name: str
    type: str
    default: Any
    help: str


class Registry:
    """Named config dataclasses of one kind (e.g. "method"): register, look up, build with checked options."""

    def __init__(self, kind: str, builtin: tuple[str, ...] = ()):
        self.kind = kind
        self.builtin = builtin
        self._entries: dict[str, type] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[type], type]:
        """Class decorator: ``cls`` becomes available as ``name`` (``cls.name`` is set to it)."""

        def decorate(cls: type) -> type:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise PrunekitError(f"{self.kind} {key!r} registered twice")
            cls.name = name
            self._entries[name] = cls
            self._aliases.update({alias: name for alias in aliases})
            return cls

        return decorate

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self.builtin:
                importlib.import_module(module)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases, or a did-you-mean error."""
        self._load()
        if not isinstance(name, str):
            raise PrunekitError(f"{self.kind} must be a name (a string), got {short_repr(name)}")
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise unknown_choice(self.kind, name, [*self._entries, *self._aliases])

    def get(self, name: str) -> type:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def check(self, name: str, options: typing.Mapping | None = None) -> dict:
        """The options of entry ``name`` checked (types, ranges, unknown keys) and converted."""
        name = self.canonical(name)
        return check_fields(self._entries[name], options or {}, f"{self.kind} {name!r}")

    def build(self, name: str, options: typing.Mapping | None = None) -> Any:
        """An instance of entry ``name`` with checked ``options``."""
        checked = self.check(name, options)
        return self._entries[self.canonical(name)](**checked)

    def options(self, name: str) -> list[OptionInfo]:
        """The options of entry ``name``: name, type, default and help text (for --help and docs)."""
        cls = self.get(name)
        hints = typing.get_type_hints(cls)
        infos = []
        for f in dataclasses.fields(cls):
            if not f.init or f.name.startswith("_"):
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            infos.append(OptionInfo(f.name, _type_name(hints.get(f.name, Any)), default, f.metadata.get("help", "")))
        return infos

    def describe(self) -> list[tuple[str, str]]:
        """(name, first line of the entry's docstring) for every entry, sorted by name."""
        rows = []
        for name in self.names():
            doc = (self._entries[name].__doc__ or "").strip().splitlines()
            rows.append((name, doc[0] if doc else ""))
        return rows


# ------------------------------------------------------------------ one instance per kind

METHODS = Registry("method", builtin=("prunekit.oneshot",))
"""One-shot methods: weight scores (+ optional weight update), see ``prunekit/oneshot/``."""
CRITERIA = Registry("structured criterion", builtin=("prunekit.structured.criteria",))
"""Importance of structures (MLP channels, heads, blocks, filters), see ``prunekit/structured/criteria/``."""
ALLOCATIONS = Registry("allocation", builtin=("prunekit.core.allocation",))
"""How a target fraction is spread over layers or groups (uniform, global, OWL, floor, per-block budgets)."""
SCHEDULES = Registry("schedule", builtin=("prunekit.training.schedules",))
"""Sparsity as a function of the training step (constant, linear, cubic AGP, one-shot)."""
SCORES = Registry("data score", builtin=("prunekit.data.scores",))
"""Per-example scores for data pruning, each with its direction, see ``prunekit/data/scores/``."""
SELECTORS = Registry("selector", builtin=("prunekit.data.select",))
"""Which examples a data-pruning run keeps (hardest, easiest, band, CCS, class quotas, random)."""
STEPS = Registry("recipe step", builtin=("prunekit.oneshot.step", "prunekit.structured.recipe",
                                        "prunekit.training.step", "prunekit.data.select", "prunekit.vocab.step",
                                        "prunekit.delta.step"))
"""The kinds of step a recipe may hold (``kind:`` key of a step), see :mod:`prunekit.core.recipe`."""
DELTA_METHODS = Registry("delta method", builtin=("prunekit.delta",))
"""How the delta between a fine-tuned model and its base is pruned (DARE, DAREx-q, ...), see ``prunekit/delta/``."""
TASKS = Registry("task", builtin=("prunekit.evaluate.tasks",))
"""Zero-shot evaluation tasks built offline from real text (WordNet, Brown), see ``prunekit/evaluate/tasks/``."""
