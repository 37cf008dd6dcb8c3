"""Fuzz the recipe reader (issue 8): random nesting, types, YAML tags, aliases, sizes and encodings.

Every case is either accepted, and then a valid recipe (values in range, and reading its own
``to_dict()`` gives it back), or rejected with one short line (a ``ValueError``, normally
:class:`~prunekit.core.errors.PrunekitError`); never another exception, a traceback or a hang. A
handful of rejected files also go through ``prunekit prune`` (exit code 2, one line, nothing
written). Seeded: the same cases every run; a few hundred in well under a minute.
"""

from __future__ import annotations

import json
import math
import random
import string

import pytest
import yaml

from prunekit.cli import main
from prunekit.core.recipe import CalibrationConfig, Recipe, load_recipe
from prunekit.oneshot.step import PruneStep
from prunekit.structured.recipe import StructuredStep

SEED = 20260
STEP_KEYS = [f for f in PruneStep.__dataclass_fields__] + ["kind", "sparsty", ""]
CALIB_KEYS = [f for f in CalibrationConfig.__dataclass_fields__] + ["samples"]
STRUCT_KEYS = [f for f in StructuredStep.__dataclass_fields__] + ["ratio", "ratios"]
WORDS = ["wanda", "sparsegpt", "magnitude", "random", "gblm", "wandaa", "flap", "taylor", "cfsp", "l1",
         "uniform", "global", "owl", "blocks", "per-row", "unstructured", "2:4", "4:8", "4:4", "0:4", "2:3",
         "brown", "brown:a", "brown:zz", "Linear", "re:.*proj", "re:(", "mlp", "heads", "mlp,heads", "filters",
         "true", "null", "1e999", "-0", "é\u2028x", "a\nb", "percdamp", "blocksize", "alpha", "beta"]


def scalar(rng: random.Random):
    kind = rng.randrange(12)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, 2, 4, 8, 16, 32, 64, 128, -1, -5, 2**31, 2**63, 10**400])
    if kind == 3:
        return rng.choice([0.0, 0.1, 0.5, 0.7, 0.99, 1.0, 1.5, -0.1, 1e-12, 1e308, math.inf, -math.inf, math.nan])
    if kind == 4:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(0, 12)))
    if kind == 5:
        return "x" * rng.choice([1, 200, 5000])
    return rng.choice(WORDS)


def value(rng: random.Random, depth: int = 0, max_depth: int = 6):
    """Any plain value: scalars, lists and mappings nested up to ``max_depth``."""
    if depth >= max_depth or rng.random() < 0.55:
        return scalar(rng)
    if rng.random() < 0.5:
        return [value(rng, depth + 1, max_depth) for _ in range(rng.randrange(0, 4))]
    keys = STEP_KEYS + CALIB_KEYS + ["steps", "calibration", "structured"]
    out = {}
    for _ in range(rng.randrange(0, 4)):
        key = rng.choice(keys) if rng.random() < 0.7 else scalar(rng)
        try:
            out[key] = value(rng, depth + 1, max_depth)
        except TypeError:  # an unhashable key cannot occur in parsed data
            pass
    return out


def section(rng: random.Random, keys: list[str], good: dict) -> dict:
    """A mapping of mostly known keys: good values, or random ones."""
    out = {}
    for key in rng.sample(keys, rng.randrange(0, min(len(keys), 5))):
        out[key] = good[key] if key in good and rng.random() < 0.6 else value(rng, 0, 3)
    return out


GOOD_STEP = {"method": "magnitude", "sparsity": 0.5, "pattern": "unstructured", "allocation": "uniform",
             "owl_lambda": 0.05, "owl_m": 5.0, "targets": ["Linear"], "ignore": ["re:lm_head"], "options": {},
             "seed": 3}
GOOD_CALIB = {"source": "brown:r", "nsamples": 4, "seqlen": 32, "seed": 1, "chunk_size": 2, "runner": "two-pass",
              "compute_dtype": "float32"}
GOOD_STRUCT = {"method": "magnitude", "structure": "mlp", "ratio": 0.2, "remove": None, "allocation": "uniform",
               "round_to": 8, "floor": 0.05, "bias_compensation": False, "options": {}}


def recipe_data(rng: random.Random):
    roll = rng.random()
    if roll < 0.1:
        return value(rng, 0, 8)
    data = {}
    if rng.random() < 0.85:
        steps = [section(rng, STEP_KEYS, GOOD_STEP) for _ in range(rng.randrange(0, 3))]
        data["steps"] = steps if rng.random() < 0.85 else (steps[0] if steps else value(rng, 0, 2))
    if rng.random() < 0.6:
        data["calibration"] = section(rng, CALIB_KEYS, GOOD_CALIB) if rng.random() < 0.85 else value(rng, 0, 2)
    if rng.random() < 0.1:
        data[rng.choice(["step", "structured", 1, None])] = value(rng, 0, 2)
    return data


def structured_data(rng: random.Random):
    if rng.random() < 0.1:
        return value(rng, 0, 6)
    step = {"kind": "structured", **section(rng, STRUCT_KEYS, GOOD_STRUCT)} if rng.random() < 0.9 else value(rng, 0, 2)
    data = {"steps": [step]}
    if rng.random() < 0.5:
        data["calibration"] = section(rng, CALIB_KEYS, GOOD_CALIB)
    return data


def check_one_line(err: BaseException) -> None:
    message = str(err)
    assert isinstance(err, ValueError), f"{type(err).__name__}: {message[:300]}"
    assert message and "\n" not in message and "\r" not in message, repr(message[:300])


def check_valid(recipe: Recipe) -> None:
    assert recipe.steps and all(isinstance(s, (PruneStep, StructuredStep)) for s in recipe.steps)
    for step in recipe.steps:
        if isinstance(step, StructuredStep):
            assert isinstance(step.structure, str) and isinstance(step.round_to, int) and step.round_to >= 1
            assert step.sparsity is None or 0 <= step.sparsity < 1
            assert 0 <= step.floor < 1 and step.bias_compensation in (None, True, False)
            continue
        assert 0 <= step.sparsity < 1 and 0 <= step.owl_lambda < 1 and step.owl_m > 0
        assert isinstance(step.seed, int) and not isinstance(step.seed, bool) and step.seed >= 0
        assert step.targets and all(isinstance(t, str) for t in step.targets + step.ignore)
    c = recipe.calibration
    assert (isinstance(c.source, str) and c.source) or all(isinstance(t, str) for t in c.source)
    for v in (c.nsamples, c.seqlen, c.chunk_size):
        assert isinstance(v, int) and not isinstance(v, bool) and v >= 1
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def outcome(fn, data, check):
    try:
        result = fn(data)
    except ValueError as err:
        check_one_line(err)
        return "rejected"
    check(result)
    return "accepted"


def test_fuzz_recipe_from_dict():
    rng = random.Random(SEED)
    seen = {"accepted": 0, "rejected": 0}
    for i in range(400):
        data = recipe_data(rng)
        try:
            seen[outcome(Recipe.from_dict, data, check_valid)] += 1
        except Exception as err:  # noqa: BLE001 - report the case
            raise AssertionError(f"case {i}: {data!r:.300} -> {type(err).__name__}: {str(err)[:300]}") from err
    assert seen["accepted"] >= 20 and seen["rejected"] >= 200, seen  # both sides are exercised


def test_fuzz_structured_recipe_from_dict():
    rng = random.Random(SEED + 1)
    seen = {"accepted": 0, "rejected": 0}
    for i in range(150):
        data = structured_data(rng)
        try:
            seen[outcome(Recipe.from_dict, data, check_valid)] += 1
        except Exception as err:  # noqa: BLE001
            raise AssertionError(f"case {i}: {data!r:.300} -> {type(err).__name__}: {str(err)[:300]}") from err
    assert seen["accepted"] >= 5 and seen["rejected"] >= 50, seen


def file_text(rng: random.Random) -> tuple[str, bytes]:
    """(suffix, content) of a recipe file: dumped data, possibly mangled, tagged, aliased, huge or deep."""
    data = recipe_data(rng)
    suffix = rng.choice([".yaml", ".yml", ".json"])
    try:
        text = json.dumps(data) if suffix == ".json" else yaml.safe_dump(data, allow_unicode=True)
    except (TypeError, ValueError, OverflowError):  # keys json cannot write
        text = yaml.safe_dump(data)
        suffix = ".yaml"
    roll = rng.randrange(12)
    if roll == 0:  # a tag
        tag = rng.choice(["!!python/object/apply:os.system ['true']", "!!binary aGVsbG8=", "!!str 5",
                          "!!python/name:builtins.exec", "!custom x", "!!set {a, b}", "!!timestamp 2001-12-14"])
        text = f"steps:\n  - method: {tag}\n" if rng.random() < 0.5 else f"{tag}\n"
        suffix = ".yaml"
    elif roll == 1:  # aliases (a billion laughs in miniature)
        text = "a: &a [x, x]\nb: &b [*a, *a]\nsteps: [{method: wanda, options: {o: *b}}]\n"
        suffix = ".yaml"
    elif roll == 2:  # deep nesting, flow or block
        n = rng.choice([31, 33, 200, 50_000])
        text = "[" * n + "]" * n if rng.random() < 0.5 else "".join("  " * d + "- \n" for d in range(min(n, 2000)))
    elif roll == 3:  # truncated
        text = text[: rng.randrange(0, max(1, len(text)))]
    elif roll == 4:  # size
        text = text + "\n#" + "x" * rng.choice([100, (1 << 20) + 10])
        suffix = ".yaml"
    elif roll == 5:  # random bytes
        return suffix, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    elif roll == 6:  # empty-ish
        text = rng.choice(["", "null", "[]", "{}", "---\n", "~", "0", "''"])
    elif roll == 7:  # unquoted N:M, sexagesimal in YAML 1.1
        text = "steps: [{method: magnitude, pattern: 2:4}]\n"
        suffix = ".yaml"
    return suffix, text.encode("utf-8")


def test_fuzz_recipe_files(tmp_path):
    rng = random.Random(SEED + 2)
    seen = {"accepted": 0, "rejected": 0}
    for i in range(400):
        suffix, content = file_text(rng)
        path = tmp_path / f"case{i}{suffix}"
        path.write_bytes(content)
        try:
            seen[outcome(load_recipe, path, check_valid)] += 1
        except Exception as err:  # noqa: BLE001
            raise AssertionError(f"case {i}: {content[:300]!r} -> {type(err).__name__}: {str(err)[:300]}") from err
    assert seen["accepted"] >= 5 and seen["rejected"] >= 200, seen  # one reader for every kind of recipe


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tests.conftest import tiny_model

    folder = tmp_path_factory.mktemp("fuzz") / "tiny"
    tiny_model("llama").save_pretrained(folder)
    return folder


CLI_CASES = {
    "tag": ("r.yaml", "!!python/object/apply:os.system ['echo owned']\n"),
    "deep": ("r.json", "[" * 100_000 + "]" * 100_000),
    "alias": ("r.yaml", "a: &a [1]\nsteps: [{method: wanda, options: {x: *a}}]\n"),
    "empty": ("r.yaml", "---\n"),
    "bool seqlen": ("r.yaml", "calibration: {seqlen: true}\n"),
    "huge int": ("r.yaml", f"steps: [{{method: magnitude, sparsity: {10**400}}}]\n"),
    "binary": ("r.yaml", "\udcff".encode("utf-8", "surrogateescape").decode("latin-1") + "steps: []\n"),
    "garbage": ("r.yaml", "steps: [{method: wanda, sparsity: 0.5\n  - ]: :\n"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_rejected_recipes_exit_2_through_the_cli(case, tiny_llama, tmp_path, capsys):
    name, text = CLI_CASES[case]
    recipe = tmp_path / name
    recipe.write_bytes(text.encode("latin-1") if case == "binary" else text.encode())
    out = tmp_path / "out"
    code = main(["prune", "--model", str(tiny_llama), "--recipe", str(recipe), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("prunekit prune: error: "), err
    assert len(err) < 500
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]
