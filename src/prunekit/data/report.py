"""The score report of a score table: per-score summary and seed stability, as markdown.

``prunekit data report`` prints it and, with ``--out``, writes it through the one writer
(:func:`prunekit.core.io.atomic_file`): a new file, or with ``overwrite`` one this module wrote.
"""

from __future__ import annotations

from pathlib import Path

REPORT_TITLE = "# Score report:"


def report_markdown(folder: str | Path) -> str:
    """Per-score summary and pairwise seed stability (Spearman, Kendall) as markdown; the folder, score
    names and directions come from files, so they are escaped (``core.markup.md_escape``)."""
    import numpy as np

    from prunekit.core.markup import md_escape
    from prunekit.data.table import ScoreTable, stability_report

    table = ScoreTable.load(folder)
    lines = [f"{REPORT_TITLE} {md_escape(folder)}", "", f"{table.n_examples()} examples, {len(table)} rows.", "",
             "| score | direction | runs (seed, checkpoint) | mean | std | min | max |", "|---|---|---|---|---|---|---|"]
    for s in table.score_names:
        v = table.vector(s)
        lines.append(f"| {md_escape(s)} | {md_escape(table.direction(s))} | {table.runs(s)} | {np.nanmean(v):.4g} "
                     f"| {np.nanstd(v):.4g} | {np.nanmin(v):.4g} | {np.nanmax(v):.4g} |")
    stab = stability_report(table)
    lines += ["", "## Stability between seeds", ""]
    if stab:
        lines += ["| score | seeds | Spearman | Kendall |", "|---|---|---|---|"]
        lines += [f"| {md_escape(r['score'])} | {r['seed_a']} vs {r['seed_b']} | {r['spearman']:.3f} | "
                  f"{r['kendall']:.3f} |" for r in stab]
    else:
        lines.append("Only one seed per score: nothing to compare.")
    return "\n".join(lines) + "\n"


def not_a_report(path: Path) -> str | None:
    """Why the existing ``path`` is not a score report this module wrote (None when it is)."""
    try:
        with path.open("rb") as f:
            ours = f.read(len(REPORT_TITLE)).decode("utf-8", "replace") == REPORT_TITLE
    except OSError:
        ours = False
    return None if ours else "is not a prunekit score report"


def check_report_out(out: str | Path, folder: str | Path, overwrite: bool = False) -> None:
    """``out`` may be written (before any work): new, or a report this module wrote with ``overwrite``."""
    from prunekit.core.io import check_output

    check_output(out, overwrite, inputs=(str(folder),), owned=not_a_report)


def write_report(folder: str | Path, out: str | Path | None = None, overwrite: bool = False) -> str:
    """The report of the score table in ``folder``; written to ``out`` too when given."""
    from prunekit.core.io import atomic_file, write_text

    if out is not None:
        check_report_out(out, folder, overwrite)
    text = report_markdown(folder)
    if out is not None:
        with atomic_file(out, not_a_report, overwrite, inputs=(str(folder),)) as tmp:
            write_text(tmp, text)
    return text
