"""Every `prunekit ...` command in the README and the guides still parses (issue 9: the CLI keeps working for
every documented command; old flag spellings stay as aliases). Parsing only: running them is the job of the
slow end-to-end tests and the demo test."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from prunekit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every line of a ```bash block that runs prunekit (continuations joined)."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("#", 1)[0].strip()
                match = re.search(r"(?:^|&& |\.venv/bin/)prunekit (\w.*)$", line)
                if match:
                    found.append((doc.name, match.group(1)))
    return found


COMMANDS = documented_commands()


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 15 and {c.split()[0] for _, c in COMMANDS} >= {"prune", "eval", "inspect", "demo",
                                                                          "train", "data"}


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{d}: {c[:50]}" for d, c in COMMANDS])
def test_documented_command_parses(doc, command):
    try:
        build_parser().parse_args(shlex.split(command))
    except SystemExit as exit_:
        pytest.fail(f"{doc}: `prunekit {command}` does not parse (exit {exit_.code})")
