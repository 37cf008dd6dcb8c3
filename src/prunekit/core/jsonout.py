"""The one JSON printer of the CLIs: strict JSON, whatever the numbers are.

``json.dumps`` writes a NaN or infinite float as the bare words ``NaN`` / ``Infinity``, which no strict
JSON parser accepts (``jq``, JavaScript's ``JSON.parse``, Go, ...): a perplexity of NaN made
``prunekit eval --json`` print a line that does not parse. :func:`dumps_json` writes every
non-finite number as ``null`` (and every other number as a plain JSON number) and refuses to write
anything that is not strict JSON (``allow_nan=False``).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping


def finite_or_none(value: object) -> object:
    """``value`` with every non-finite real number inside it (dicts, lists, tuples) replaced by None;
    real numbers that are not Python's own (numpy, fractions) become ``float``."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {_key(key): finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def _key(key: object) -> object:
    """A dict key as strict JSON writes it: a non-finite float key becomes its name (``"nan"``, ``"inf"``)."""
    return str(key) if isinstance(key, float) and not math.isfinite(key) else key


def dumps_json(obj: object, **kwargs) -> str:
    """``json.dumps(obj, **kwargs)`` as strict JSON: NaN and infinities become ``null``."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)
