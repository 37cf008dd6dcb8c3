"""The one place a pruning method becomes available: ``@register`` on its config dataclass."""

from __future__ import annotations

import dataclasses
import difflib

_METHODS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a method dataclass available under ``cls.name``."""
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def _load_builtin() -> None:
    import prunekit.methods  # noqa: F401  (importing registers the built-in methods)


def method_names() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)


def unknown_name_error(kind: str, name: str, choices: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}{hint} (choices: {', '.join(choices)})")


def get_method_class(name: str) -> type:
    _load_builtin()
    if name not in _METHODS:
        raise unknown_name_error("method", name, sorted(_METHODS))
    return _METHODS[name]


def build_method(name: str, options: dict | None = None):
    """Instantiate method ``name`` with its options; unknown option keys are errors."""
    cls = get_method_class(name)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in options or {}:
        if key not in fields:
            raise ValueError(
                f"unknown option {key!r} for method {name!r} (choices: {', '.join(fields) or 'none'})"
            )
    return cls(**(options or {}))
