"""Report injection (issue 18, class 7): a string prunekit did not write reaches its pages only as text.

A prunekit output of the tiny random Llama is made once; each row plants one hostile string in one
place (a field of ``prunekit.json``, the target's or the baseline's path), runs ``prunekit report``
in-process in Markdown and in HTML, and compares the page with the page of the same place holding
a benign string: the same headings, the same table rows and cells, the same HTML tags, only the
plots prunekit drew as images, no link, no raw tag, no remote URL, no line break but prunekit's
own, no value longer than the cap. The data report (``prunekit data report``) gets the same checks
for score names, directions and folder paths, and ``report.json`` must be strict JSON (NaN: null).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import unicodedata
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from prunekit.cli import main
from tests.test_bad_inputs import tiny_source  # noqa: F401

PLOTS = {"layers.png", "quality.png", "speed.png"}
BENIGN = "benign"
ATTACKS = {
    "remote image": "![x](http://evil/beacon.png)",
    "img tag": "<img src=http://evil/tag.png>",
    "script": "<script>alert(1)</script>",
    "javascript link": "[click](javascript:alert(1))",
    "fake heading": "x\n# Fake heading\n![x](http://evil/newline.png)",
    "table break": "1 |\n| injected | row | here | x |",
    "line separator": "x\u2028# Fake heading\u2029<img src=//evil/separator.png>",
    "very long": "a" * 100_000 + "![x](https://evil/long.png)",
}
SPEED = {"dense": {"parameters": 100, "flops_per_token": 2e9, "prefill_s": 0.01, "decode_tokens_per_s": 50.0},
         "pruned": {"parameters": 50, "flops_per_token": 1e9, "prefill_s": 0.005, "decode_tokens_per_s": 90.0},
         "parameter_ratio": 0.5, "flops_ratio": 0.5, "prefill_speedup": 2.0, "decode_speedup": 1.8,
         "seq_len": 32, "decode_tokens": 2, "runs": 1, "threads": 1}


@pytest.fixture(scope="module")
def pruned(tiny_source, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("injection") / "pruned"
    assert main(["prune", "--model", str(tiny_source), "--out", str(out), "--quiet", "--method", "magnitude",
                 "--calibration", "brown:r", "--nsamples", "2", "--seqlen", "16"]) == 0
    return out


# ------------------------------------------------------------------ where a string is planted

def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to, copy_function=os.link, ignore=shutil.ignore_patterns("report"))
    return to


def _manifest(change):
    """A planter that edits the copy's prunekit.json (a new file: the hard link to the original is broken)."""
    def plant(value: str, pruned: Path, tmp: Path) -> tuple[str, str]:
        folder = _copy(pruned, tmp / "target")
        file = folder / "prunekit.json"
        data = json.loads(file.read_text())
        change(data, value)
        file.unlink()
        file.write_text(json.dumps(data))
        return str(folder), "none"
    return plant


def _step(key: str):
    return _manifest(lambda data, value: data["steps"][0].__setitem__(key, value))


def _speed_seq_len(data: dict, value: str) -> None:
    data["speed"] = {**SPEED, "seq_len": value}


def _target_path(value: str, pruned: Path, tmp: Path) -> tuple[str, str]:
    """The target given as a relative path that is the hostile string (its slashes make sub-folders)."""
    _copy(pruned, tmp / value)
    return value, "none"


def _baseline_path(value: str, pruned: Path, tmp: Path) -> tuple[str, str]:
    _copy(pruned, tmp / value)
    return str(_copy(pruned, tmp / "target")), value


PLACES = {
    "step method": _step("method"),
    "step kind": _step("kind"),
    "step allocation": _step("allocation"),
    "calibration value": _manifest(lambda data, value: data["calibration"].__setitem__("source", value)),
    "calibration key": _manifest(lambda data, value: data["calibration"].__setitem__(value, 1)),
    "result dtype": _manifest(lambda data, value: data["result"].__setitem__("dtype", value)),
    "speed receipt": _manifest(_speed_seq_len),
    "target path": _target_path,
    "baseline path": _baseline_path,
}

ROWS = {  # id -> (place, attack)
    "remote image in a step's method": ("step method", "remote image"),
    "img tag in the calibration source": ("calibration value", "img tag"),
    "script in the result's dtype": ("result dtype", "script"),
    "javascript link as a calibration key": ("calibration key", "javascript link"),
    "newline and fake heading in a step's kind": ("step kind", "fake heading"),
    "table break in the speed receipt": ("speed receipt", "table break"),
    "U+2028 and fake heading in the allocation": ("step allocation", "line separator"),
    "very long method": ("step method", "very long"),
    "remote image as the target's path": ("target path", "remote image"),
    "fake heading in the baseline's path": ("baseline path", "fake heading"),
}


def _page(place: str, value: str, fmt: str, pruned: Path, tmp: Path, monkeypatch) -> str:
    monkeypatch.chdir(tmp)
    target, baseline = PLACES[place](value, pruned, tmp)
    out = tmp / "page"
    assert main(["report", target, "--baseline", baseline, "--out", str(out), "--format", fmt, "--quiet",
                 "--tasks", "none"]) == 0
    return (out / f"report.{fmt}").read_text(encoding="utf-8")


_REFERENCE: dict[tuple[str, str], str] = {}


def _reference(place: str, fmt: str, pruned: Path, tmp_path_factory, monkeypatch) -> str:
    if (place, fmt) not in _REFERENCE:
        tmp = tmp_path_factory.mktemp("benign")
        _REFERENCE[place, fmt] = _page(place, BENIGN, fmt, pruned, tmp, monkeypatch)
    return _REFERENCE[place, fmt]


# ------------------------------------------------------------------ what a page may hold

_ESCAPED = re.compile(r"\\[!-/:-@\[-`{-~]")  # a backslash escape: the character after it is plain text
_CODE = re.compile(r"(`+).*?\1")
_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\n]*)\)")


def active(md: str) -> str:
    """The Markdown with its escaped characters and code spans blanked: what a renderer would act on."""
    return _CODE.sub(" ", _ESCAPED.sub("\x00", md))


def headings(md: str) -> list[str]:
    return [line for line in md.split("\n") if re.match(r" {0,3}#", line)]


def table_shape(md: str) -> list[int]:
    """The number of cells of every table line (split at the pipes that are not escaped)."""
    return [len(line.split("|")) for line in active(md).split("\n") if line.lstrip().startswith("|")]


def check_markdown(md: str, reference: str, cap: int = 1000) -> None:
    live = active(md)
    assert not re.search(r"(?i)https?:|ftp:|www\.", live), "a URL a renderer would turn into a link"
    assert not re.search(r"<[A-Za-z/!?]", live), "a raw HTML tag"
    links = _LINK.findall(live)
    assert all(bang == "!" and url in PLOTS for bang, _, url in links), f"a link or a foreign image: {links}"
    assert len(links) == len(_LINK.findall(active(reference)))
    odd = {c for c in md if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")}
    assert not odd, f"line breaks or control characters: {odd}"
    ours, theirs = headings(reference), headings(md)
    assert len(theirs) == len(ours) and all(h == r or h.startswith(r.split(": ")[0] + ": ")
                                            for h, r in zip(theirs, ours)), f"a heading added: {theirs}"
    assert table_shape(md) == table_shape(reference), "table rows or cells added"
    assert max(map(len, md.split("\n"))) <= cap and len(md) <= len(reference) + cap, "a value was not capped"


class Tags(HTMLParser):
    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list]] = []
        self.other: list[str] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)

    def handle_comment(self, data):
        self.other.append(f"comment {data!r}")

    def handle_pi(self, data):
        self.other.append(f"processing instruction {data!r}")

    def handle_decl(self, decl):
        if decl.lower() != "doctype html":
            self.other.append(f"declaration {decl!r}")


ALLOWED = {"meta": {"charset"}, "title": set(), "style": set(), "h1": set(), "h2": set(), "p": set(),
           "ul": set(), "li": set(), "table": set(), "tr": set(), "th": set(), "td": set(), "img": {"alt", "src"}}


def check_html(page: str, reference: str) -> None:
    parsed, ours = Tags(page), Tags(reference)
    assert not parsed.other
    for tag, attrs in parsed.tags:
        assert tag in ALLOWED, f"a tag prunekit does not emit: <{tag}>"
        assert {a for a, _ in attrs} <= ALLOWED[tag], f"<{tag}> with {attrs}"
        assert tag != "img" or dict(attrs)["src"] in PLOTS, f"a foreign image: {attrs}"
    assert Counter(t for t, _ in parsed.tags) == Counter(t for t, _ in ours.tags), "elements added or removed"
    style = "".join(re.findall(r"(?s)<style>(.*?)</style>", page))
    assert not re.search(r"(?i)url\(|@import|//", style), "a resource loaded by the style sheet"
    text = "".join(parsed.text)
    odd = {c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")}
    assert not odd, f"line breaks or control characters: {odd}"
    assert max(map(len, page.split("\n"))) <= 1500 and len(page) <= len(reference) + 1500, "a value was not capped"


@pytest.mark.parametrize("fmt", ["md", "html"])
@pytest.mark.parametrize("row", list(ROWS))
def test_a_planted_string_stays_text(row, fmt, pruned, tmp_path, tmp_path_factory, monkeypatch):
    place, attack = ROWS[row]
    reference = _reference(place, fmt, pruned, tmp_path_factory, monkeypatch)
    page = _page(place, ATTACKS[attack], fmt, pruned, tmp_path, monkeypatch)
    (check_markdown if fmt == "md" else check_html)(page, reference)


def test_report_json_is_strict_json_with_nan(pruned, tmp_path):
    """One item per task: the standard errors are NaN, written as null (``NaN`` is not JSON)."""
    out = tmp_path / "page"
    assert main(["report", str(pruned), "--baseline", "none", "--out", str(out), "--quiet", "--tasks",
                 "wordnet-gloss", "--limit", "1"]) == 0

    def refuse(name):
        raise AssertionError(f"report.json holds {name}")

    data = json.loads((out / "report.json").read_text(), parse_constant=refuse)
    assert data["target"]["quality"]["tasks"]["wordnet-gloss"]["acc_stderr"] is None


# ------------------------------------------------------------------ prunekit data report

def _scores(folder: Path, name: str = BENIGN, direction: str = "higher=harder") -> Path:
    from prunekit.data.table import ScoreTable

    table = ScoreTable()
    hashes = [f"{i:016x}" for i in range(6)]
    for seed in (0, 1):
        table.add(name, np.arange(6.0) * (seed + 1), hashes, seed=seed, direction=direction)
        table.add("el2n", np.arange(6.0)[::-1] + seed, hashes, seed=seed)
    table.save(folder, fmt="npz")
    return folder


DATA_ROWS = {  # id -> (where, attack)
    "remote image as a score name": ("name", "remote image"),
    "table break as a score name": ("name", "table break"),
    "fake heading as a direction": ("direction", "fake heading"),
    "script as a direction": ("direction", "script"),
    "line separator in the folder path": ("folder", "line separator"),
    "very long score name": ("name", "very long"),
}


def _data_report(where: str, value: str, tmp: Path, capsys) -> str:
    folder = tmp / (value.replace("//", "/") if where == "folder" else "scores")
    _scores(folder, **({where: value} if where != "folder" else {}))
    capsys.readouterr()
    assert main(["data", "report", "--scores", str(folder)]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("row", list(DATA_ROWS))
def test_data_report_keeps_names_as_text(row, tmp_path, capsys):
    where, attack = DATA_ROWS[row]
    reference = _data_report(where, BENIGN, tmp_path / "benign", capsys)
    check_markdown(_data_report(where, ATTACKS[attack], tmp_path / "hostile", capsys), reference)
