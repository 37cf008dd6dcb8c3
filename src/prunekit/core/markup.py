"""Foreign text in the pages prunekit writes (Markdown reports, their HTML, their JSON).

A value prunekit did not write itself -- a field of ``prunekit.json`` or ``config.json``, a path,
a model's layer name, a score name from a table -- reaches a page only through :func:`md_escape`:
one line (line breaks, Unicode line separators and other control or format characters become
spaces), at most :data:`MAX_CHARS` characters, every character Markdown could act on escaped with a
backslash (CommonMark allows one before any ASCII punctuation), and ``://`` and ``www.`` broken so
that no renderer turns it into a link. It can then open no heading, table row, image, link or HTML
tag. :func:`inline_html` and :func:`split_cells` read such text back for the HTML page: an escaped
character is plain text there too.
"""

from __future__ import annotations

import html
import re
import unicodedata

MAX_CHARS = 200  # of one foreign value on a page; longer ones are cut and end in an ellipsis

# backslash, table pipe, emphasis, link/image brackets, HTML, heading, code span, entity, strike-through
_SPECIAL = re.compile(r"[\\|*_\[\]()<>!#`&~]")
_URL_PARTS = re.compile(r":(?=/)|(?i:(?<=www))\.")  # the ':' of 'x://' and the '.' of 'www.' (GFM autolinks)
_BREAKS = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # controls, format characters (bidi), line separators
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")  # a backslash escape of an ASCII punctuation character


def one_line(value: object, limit: int = MAX_CHARS) -> str:
    """``str(value)`` on one line without control or format characters, cut to ``limit`` characters."""
    text = "".join(" " if unicodedata.category(c) in _BREAKS else c for c in str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def md_escape(value: object, limit: int = MAX_CHARS) -> str:
    """A value prunekit did not write, as inert Markdown text on one line (see the module docstring)."""
    text = _SPECIAL.sub(lambda m: "\\" + m.group(), one_line(value, limit))
    return _URL_PARTS.sub(lambda m: "\\" + m.group(), text)


def plot_text(value: object, limit: int = 60) -> str:
    """A foreign value in a matplotlib label: one short line whose ``$`` does not start mathtext."""
    return one_line(value, limit).replace("$", r"\$")


def split_cells(row: str) -> list[str]:
    """The cells of a Markdown table row, split at the pipes that are not backslash-escaped."""
    cells, cell, i = [], "", 0
    body = row.strip()
    body = body[1:] if body.startswith("|") else body
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            cell, i = cell + body[i: i + 2], i + 2
            continue
        if body[i] == "|":
            cells.append(cell.strip())
            cell = ""
        else:
            cell += body[i]
        i += 1
    if cell.strip():
        cells.append(cell.strip())
    return cells


def inline_html(text: str) -> str:
    """Markdown text as HTML text: backslash escapes resolved, then everything HTML-escaped."""
    return html.escape(_ESCAPED.sub(r"\1", text), quote=True)

