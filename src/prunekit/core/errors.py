"""The one error class of prunekit: a bad input or a refused operation.

The CLI prints it as one line (``prunekit <command>: error: <message>``) and exits with code 2;
the Python API raises it. It is a ``ValueError`` so that callers catching ``ValueError`` keep working.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable


class PrunekitError(ValueError):
    """A bad value, a missing file, a refused output: the message names the value and the choices."""


class UnknownKey(PrunekitError, KeyError):
    """A name that is not there (a score, a layer, an example): a :class:`PrunekitError` that is also
    the ``KeyError`` a mapping lookup raises, printed as its message (not as a quoted key)."""

    __str__ = ValueError.__str__


def unknown_choice(kind: str, name: object, choices: Iterable[str], where: str = "") -> PrunekitError:
    """``unknown <kind> 'x' [in <where>]; did you mean 'y'? (choices: ...)``."""
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    of = f" in {where}" if where else ""
    return PrunekitError(f"unknown {kind} {short_repr(name)}{of}{hint} (choices: {', '.join(choices) or 'none'})")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 40, 40, 40


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (values in error messages stay on one short line)."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
