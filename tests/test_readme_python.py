"""The README's Python snippets run as written (issue 19), in order, in one namespace, on the real
SmolLM2-135M; the prunekit.json the first one saves re-runs from the CLI to the same weights."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_shows_the_verb_the_output_and_the_inputs():
    text = "\n".join(snippets())
    for needed in ("prunekit.apply(", "prunekit.save(", "Dataset.from_dict", '"kind": "structured"'):
        assert needed in text, needed
    assert "manifest=result.to_dict()" not in text  # the old snippet wrote a prunekit.json that did not re-run


@pytest.mark.slow
def test_readme_python_snippets_run_as_written(tmp_path, monkeypatch, smollm2_path):
    from prunekit.cli import main
    from prunekit.core.io import read_manifest
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for code in snippets():
            exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    lines = printed.getvalue().splitlines()
    assert any("50.00%" in line for line in lines)  # the summary of the Wanda 50% prune
    assert float(next(line for line in lines if re.fullmatch(r"\d+\.\d+", line.strip()))) < 200
    mixed = namespace["mixed"]
    assert mixed.recipe.kinds() == ["structured", "oneshot"] and mixed.parameters_after < mixed.parameters_before
    assert (tmp_path / "out/smollm2-flap-2of4/prunekit.json").is_file()

    saved = tmp_path / "out/smollm2-wanda50"
    manifest = read_manifest(saved)
    assert manifest["steps"][0]["method"] == "wanda" and manifest["calibration"]["nsamples"] == 16
    assert main(["prune", "--model", "smollm2-135m", "--recipe", str(saved / "prunekit.json"),
                 "--out", str(tmp_path / "rerun"), "--quiet"]) == 0

    def weights(folder: Path) -> dict[str, torch.Tensor]:
        tensors = {}
        for file in sorted(folder.glob("*.safetensors")):
            tensors.update(load_file(str(file)))
        return tensors

    first, again = weights(saved), weights(tmp_path / "rerun")
    projections = [n for n in first if n.endswith("proj.weight")]
    assert len(projections) == 210
    for name in projections:
        assert torch.equal(first[name], again[name]), name
