"""The one flag-to-recipe merger: command-line flags generated from the fields of recipe steps.

A command names the step kinds it runs and the calibration keys they read::

    add_step_flags(parser, [PruneStep, StructuredStep], calibration=CALIBRATION_KEYS)
    ...
    recipe = recipe_from_flags(args, PruneStep, load_recipe_arg(args))

Every init field of a step dataclass becomes one flag (``prune_start`` -> ``--prune-start``; the
``options`` mapping -> repeated ``--option key=value``; a bool -> ``--x`` / ``--no-x``; a list -> a
comma list), its help and choices read from the field's :func:`~prunekit.core.registry.option`; an
old spelling in ``Step.key_aliases`` becomes a flag of its own (``--ratio`` for ``--sparsity``).
Values stay text until the step checks them, so a bad flag gets the same one-line error as a bad
recipe key. A flag several step kinds share is one flag; one that only another kind has is refused
by name, and so is a calibration flag the running kind does not read: nothing given is ignored.

With ``--recipe``, the flags given apply to the one step of the running kind; a recipe holding
several such steps refuses them in one line naming the steps (set the value in the recipe instead).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from prunekit.core.errors import PrunekitError

CALIBRATION_FLAGS = {"source": "--calibration", "nsamples": "--nsamples", "seqlen": "--seqlen", "seed": "--seed",
                     "chunk_size": "--chunk-size", "runner": "--runner", "compute_dtype": "--compute-dtype"}
CALIBRATION_KEYS = tuple(CALIBRATION_FLAGS)  # every key of CalibrationConfig
CALIBRATION = "calibration"  # the owner of the calibration flags in a FlagSpec


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """One generated flag: where its value goes (``field`` of the steps of kinds ``owners``, or of the
    calibration) and, for an old spelling, the flag it is the old spelling of."""

    flag: str
    dest: str
    field: str
    owners: tuple[str, ...]
    hint: Any = None  # the field's annotation (how the text is converted)
    alias_of: str | None = None


@dataclasses.dataclass
class StepFlags:
    """The flags :func:`add_step_flags` added to one parser (kept in ``args.step_flags``)."""

    specs: list[FlagSpec]
    calibration: tuple[str, ...]

    def given(self, args: argparse.Namespace) -> list[tuple[FlagSpec, Any]]:
        """(flag, value) of every generated flag given on the command line, in definition order."""
        out = []
        for spec in self.specs:
            value = getattr(args, spec.dest, None)
            if value is not None and value != []:
                out.append((spec, value))
        return out


def add_output_flags(parser: argparse.ArgumentParser, *, out: str | None = None, required: bool = False,
                     old: tuple[str, ...] = (), **out_kwargs) -> None:
    """The flags every command spells alike: ``--quiet`` (no progress or tables; the final result line is
    still printed), ``--json`` (exactly one JSON line on stdout; implies --quiet) and, with ``out`` (its
    help), ``--out`` with the ``old`` spellings as hidden aliases."""
    if out is not None:
        if required and old:
            raise ValueError("a required --out has no old spellings")  # a bug in a parser, not a user's mistake
        parser.add_argument("--out", dest="out", required=required, help=out, **out_kwargs)
        for flag in old:  # the old spellings keep working, out of --help
            parser.add_argument(flag, dest="out", help=argparse.SUPPRESS, **out_kwargs)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables; the final result line "
                        "is still printed")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON line on stdout (implies --quiet)")


def flag_of(field: str) -> str:
    """``prune_start`` -> ``--prune-start``; the ``options`` mapping is given as ``--option k=v``."""
    return "--option" if field == "options" else "--" + field.replace("_", "-")


def _union_args(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _is_list(hint: Any) -> bool:
    return any(typing.get_origin(a) in (list, tuple) or a in (list, tuple) for a in _union_args(hint))


def _takes_text(hint: Any) -> bool:
    return hint is Any or any(a is str for a in _union_args(hint))


def _is_bool(hint: Any) -> bool:
    return any(a is bool for a in _union_args(hint))


def _is_mapping(hint: Any) -> bool:
    return any(a is dict or typing.get_origin(a) is dict for a in _union_args(hint))


def _step_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "" if f.default is None else f" (default: {f.default})"
    return ""


def add_step_flags(parser: argparse.ArgumentParser, steps: Iterable[type], *, calibration: Iterable[str] = (),
                   skip: Iterable[str] = ()) -> StepFlags:
    """Add a flag for every field of the step dataclasses ``steps`` (one flag per field name, shared by
    the kinds that have it) and for the ``calibration`` keys the command's steps read; ``skip`` names
    fields the command spells itself. The flags are recorded in ``args.step_flags``."""
    from prunekit.core.recipe import CalibrationConfig

    steps = list(steps)
    skip = set(skip)
    calibration = tuple(calibration)
    target = parser
    fields: dict[str, list[tuple[type, dataclasses.Field]]] = {}
    for cls in steps:
        for f in _step_fields(cls):
            if f.name not in skip:
                fields.setdefault(f.name, []).append((cls, f))
    calib_fields = {f.name: f for f in dataclasses.fields(CalibrationConfig)}
    calib_hints = typing.get_type_hints(CalibrationConfig)
    specs: list[FlagSpec] = []
    for name, owners in fields.items():
        hint = typing.get_type_hints(owners[0][0]).get(name, Any)
        kinds = tuple(cls.name for cls, _ in owners)
        flag = flag_of(name)
        shared_with_calibration = flag == CALIBRATION_FLAGS.get(name) and name in calibration
        helps = [f"{cls.name}: {f.metadata.get('help', '')}{_default_text(f)}" if len(owners) > 1 else
                 f"{f.metadata.get('help', '')}{_default_text(f)}" for cls, f in owners]
        if shared_with_calibration:
            helps.append(f"calibration: {calib_fields[name].metadata.get('help', '')}")
        dest = flag[2:].replace("-", "_")  # args.option for the options mapping, else the field's name
        choices = [f.metadata.get("choices") for _, f in owners]
        merged = tuple(dict.fromkeys(c for group in choices for c in group)) if all(choices) else None
        _add(target, flag, dest, hint, "; ".join(helps), merged)
        specs.append(FlagSpec(flag, dest, name, kinds + ((CALIBRATION,) if shared_with_calibration else ()), hint))
        for cls, _ in owners:
            for old, new in cls.key_aliases.items():
                if new == name and not any(s.dest == old for s in specs):
                    _add(target, flag_of(old), old, hint, f"old spelling of {flag}", None)
                    alias_kinds = tuple(c.name for c, _ in owners if c.key_aliases.get(old) == name)
                    specs.append(FlagSpec(flag_of(old), old, name, alias_kinds, hint, alias_of=flag))
    for key in calibration:
        flag = CALIBRATION_FLAGS[key]
        if any(s.flag == flag for s in specs):
            continue
        f = calib_fields[key]
        _add(target, flag, f"calibration_{key}" if key == "source" else key, calib_hints[key],
             f"calibration: {f.metadata.get('help', '')} (default: {f.default})", f.metadata.get("choices"))
        specs.append(FlagSpec(flag, "calibration_source" if key == "source" else key, key, (CALIBRATION,),
                              calib_hints[key]))
    flags = StepFlags(specs, calibration)
    parser.set_defaults(step_flags=flags)
    return flags


def _add(target, flag: str, dest: str, hint: Any, help: str, choices) -> None:
    metavar = "{" + ",".join(map(str, choices)) + "}" if choices else None
    help = help.replace("%", "%%")
    if _is_mapping(hint):
        target.add_argument(flag, dest=dest, action="append", default=None, metavar="KEY=VALUE", help=help)
    elif _is_bool(hint) and not _takes_text(hint):
        target.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help)
    else:
        target.add_argument(flag, dest=dest, default=None, metavar=metavar, help=help)


def convert(text: Any, hint: Any) -> Any:
    """A flag's text as the value a field of annotation ``hint`` is checked against: text for a string
    field, a list for a comma list, JSON where it is JSON (numbers, true/false, null) otherwise."""
    from prunekit.core.recipe import parse_value

    if not isinstance(text, str):
        return text
    if _is_list(hint) and not _takes_text(hint):
        item = next((typing.get_args(a)[0] for a in _union_args(hint) if typing.get_args(a)), Any)
        return [p.strip() if _takes_text(item) else parse_value(p.strip()) for p in text.split(",") if p.strip()]
    if _takes_text(hint):
        return text
    return parse_value(text)


def _shown(spec: FlagSpec, value: Any) -> str:
    if isinstance(value, list):
        return repr(" ".join(value) if spec.field == "options" else ",".join(map(str, value)))
    return repr(convert(value, spec.hint))


def step_values(args: argparse.Namespace, kind: str, fields: Iterable[str]) -> dict:
    """The step fields given by flags for a step of ``kind``: old spellings resolved (both spellings:
    an error), ``--option k=v`` merged into ``options`` (a ``k`` that is a field of the step sets that
    field), flags of other kinds refused in one line."""
    from prunekit.core.recipe import parse_options

    flags: StepFlags = args.step_flags
    fields = set(fields)
    values: dict[str, Any] = {}
    by: dict[str, tuple[FlagSpec, Any]] = {}
    for spec, value in flags.given(args):
        if kind not in spec.owners:
            if CALIBRATION in spec.owners:
                continue  # a calibration flag: checked by calibration_values
            owners = " or ".join(o for o in spec.owners if o != CALIBRATION)
            raise PrunekitError(f"{spec.flag} {_shown(spec, value)} applies only to {owners} pruning ({kind} pruning "
                                "does not use it); drop it")
        if spec.field in by:
            first, before = by[spec.field]
            old, new = (spec, first) if spec.alias_of else (first, spec)
            old_value, new_value = (value, before) if spec.alias_of else (before, value)
            raise PrunekitError(f"{old.flag} {_shown(old, old_value)} is the old spelling of {new.flag} "
                                f"{_shown(new, new_value)}; give one of them")
        by[spec.field] = (spec, value)
        if spec.field == "options":
            for key, item in parse_options(value).items():
                if key in fields and key != "options":
                    values[key] = item
                else:
                    values.setdefault("options", {})[key] = item
        else:
            values[spec.field] = convert(value, spec.hint)
    return values


def calibration_values(args: argparse.Namespace, kind: str, reads: Iterable[str]) -> dict:
    """The calibration keys given by flags; a calibration flag the ``kind`` does not read is refused."""
    flags: StepFlags = args.step_flags
    reads = set(reads)
    values = {}
    for spec, value in flags.given(args):
        if CALIBRATION not in spec.owners:
            continue
        if spec.field not in reads:
            if kind in spec.owners:
                continue  # the step's own field of that name (e.g. its seed)
            read = ", ".join(CALIBRATION_FLAGS[k] for k in CALIBRATION_KEYS if k in reads) or "no calibration"
            raise PrunekitError(f"{spec.flag} {_shown(spec, value)} does not apply to {kind} pruning (it reads {read}); "
                                "drop it")
        values[spec.field] = convert(value, spec.hint)
    return values


def _merge(base: dict, values: Mapping, replaces: Mapping[str, tuple[str, ...]]) -> dict:
    """``base`` (a recipe step's keys) updated by ``values``: a new value of a key in ``replaces`` drops
    the keys that belonged to the old one (a new method's options are not the old method's)."""
    merged = dict(base)
    for key, dropped in replaces.items():
        if key in values and values[key] != base.get(key):
            for name in dropped:
                if name not in values:
                    merged.pop(name, None)
    if isinstance(values.get("options"), dict) and isinstance(merged.get("options"), dict):
        values = {**values, "options": {**merged["options"], **values["options"]}}  # --option adds to them
    return {**merged, **values}


def recipe_from_flags(args: argparse.Namespace, step_cls: type, recipe=None, *, given: Mapping | None = None,
                      calibration: Iterable[str] | None = None, where: str | None = None):
    """The :class:`~prunekit.core.recipe.Recipe` a command runs: ``recipe`` (``--recipe``, or None) with
    the flags given applied to its one step of ``step_cls``'s kind, or a one-step recipe of the flags.

    ``given`` adds field values the command spells with flags of its own (``--no-text``);
    ``calibration`` names the calibration keys this kind reads (default: those the parser has flags
    for); ``where`` names the recipe in messages (default ``--recipe``'s path)."""
    from prunekit.core.recipe import CalibrationConfig, Recipe

    kind = step_cls.name
    names = [f.name for f in _step_fields(step_cls)]
    values = step_values(args, kind, names)
    values.update(given or {})
    reads = args.step_flags.calibration if calibration is None else tuple(calibration)
    calib = dict(vars(recipe.calibration)) if recipe is not None else {}
    calib.update(calibration_values(args, kind, reads))
    if recipe is None:
        steps = [step_cls(**values)]
    else:
        steps = list(recipe.steps)
        where = where or repr(getattr(args, "recipe", None) or "the recipe")
        found = [i for i, s in enumerate(steps) if s.name == kind]
        if values:
            shown = ", ".join(_given_flags(args, kind)) or ", ".join(sorted(values))
            if not found:
                raise PrunekitError(f"{shown} set a {kind} step, but recipe {where} holds "
                                    f"{', '.join(sorted(set(recipe.kinds())))} steps only; drop the flags")
            if len(found) > 1:
                raise PrunekitError(f"{shown} would apply to one {kind} step, but recipe {where} holds "
                                    f"{len(found)} ({', '.join(f'steps[{i}]' for i in found)}); set the values in "
                                    "the recipe instead")
            i = found[0]
            base = {k: v for k, v in steps[i].to_dict().items() if k != "kind"}
            steps[i] = step_cls(**_merge(base, values, step_cls.replaces))
    return Recipe(steps, CalibrationConfig(**calib))


def _given_flags(args: argparse.Namespace, kind: str) -> list[str]:
    return [spec.flag for spec, _ in args.step_flags.given(args) if kind in spec.owners]
