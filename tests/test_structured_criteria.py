"""Every structured criterion is a CRITERIA entry; its test rows come from the registry.

Rows: every criterion x every tiny family (MLP channels, plus attention units where the criterion
scores them), every criterion that scores CNN filters on the small CNN, bad options as one-line
errors before any model loads, and the CLI's --help list.
"""

import copy
import dataclasses
import json
import re

import pytest
import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.registry import ALLOCATIONS, CRITERIA
from prunekit.structured import allocate, prune_structured
from prunekit.structured.cnn import find_cnn_groups, prune_cnn
from prunekit.structured.criteria import STRUCTURES, Criterion, scoring
from prunekit.structured.recipe import StructuredStep
from prunekit.zoo import SmallCNN
from tests.conftest import FAMILIES, tiny_model, tiny_windows

NAMES = CRITERIA.names()
FILTER_NAMES = scoring("filters")
IDS = tiny_windows(2, 16, seed=5)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", NAMES)
def test_every_criterion_is_a_described_entry_with_checked_options(name):
    cls = CRITERIA.get(name)
    assert issubclass(cls, Criterion) and dataclasses.is_dataclass(cls)
    assert isinstance(CRITERIA.build(name), cls)  # the defaults pass the checks
    assert dict(CRITERIA.describe())[name]  # a one-line summary for --help and the docs
    assert cls.structures and set(cls.structures) <= set(STRUCTURES)
    assert all(info.help for info in CRITERIA.options(name))


def test_aliases_and_allocations_come_from_the_registries():
    assert CRITERIA.canonical("l2") == "magnitude"
    assert CRITERIA.build("l1").p == 1 and CRITERIA.build("magnitude").p == 2
    assert {"magnitude", "l1", "random"} <= set(FILTER_NAMES)
    assert set(allocate.NAMES) <= set(ALLOCATIONS.names())
    field = {f.name: f for f in dataclasses.fields(StructuredStep)}["allocation"]
    assert field.metadata["choices"] == allocate.NAMES


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", NAMES)
def test_every_criterion_prunes_every_family(name, family):
    """30% of the MLP (+ attention units where the criterion scores them) of a tiny model: it still
    runs, about 30% of the blocks' parameters are gone, widths are multiples of round_to, and the
    same seed gives the same weights."""
    structure = tuple(s for s in ("mlp", "heads") if s in CRITERIA.get(name).structures)
    dense = tiny_model(family)
    outs = []
    for _ in range(2):
        model = copy.deepcopy(dense)
        result = prune_structured(model, method=name, structure=structure, ratio=0.3, round_to=8,
                                  calibration=tiny_windows(), nsamples=8, seqlen=32, seed=3)
        outs.append((result, state(model)))
    assert result.parameters_after == sum(p.numel() for p in model.parameters()) < result.parameters_before
    assert abs(result.removed_fraction - 0.3) < 0.1
    assert all(w % 8 == 0 and 8 <= w for w in result.mlp_widths)
    with torch.no_grad():
        logits = model(IDS).logits
    assert logits.shape == (*IDS.shape, dense.config.vocab_size) and logits.isfinite().all()
    (first, first_state), (second, second_state) = outs
    assert (first.mlp_widths, first.heads) == (second.mlp_widths, second.heads)
    assert same_state(first_state, second_state)


@pytest.mark.parametrize("name", FILTER_NAMES)
def test_every_filter_criterion_prunes_the_small_cnn(name):
    example = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    dense = SmallCNN().eval()
    sizes = {g.producers[0].name: g.n_units for g in find_cnn_groups(dense, example[:1])}
    outs = []
    for _ in range(2):
        model = copy.deepcopy(dense)
        result = prune_cnn(model, example[:1], ratio=0.3, method=name, round_to=8, seed=1)
        outs.append((result, state(model)))
    assert result.parameters_after == sum(p.numel() for p in model.parameters()) < result.parameters_before
    assert result.flops_after < result.flops_before
    for producer, width in result.widths.items():
        assert width % 8 == 0 and abs(width / sizes[producer] - 0.7) <= 8 / sizes[producer]
    assert model(example).shape == (2, 10) and model(example).isfinite().all()
    assert outs[0][0].widths == outs[1][0].widths and same_state(outs[0][1], outs[1][1])


@pytest.mark.parametrize("name", [n for n in NAMES if n not in FILTER_NAMES])
def test_criteria_without_filters_refuse_cnns(name):
    with pytest.raises(PrunekitError, match=f"'{name}' does not score CNN filters.*{', '.join(FILTER_NAMES)}"):
        prune_cnn(SmallCNN(), torch.randn(1, 1, 28, 28), ratio=0.2, method=name)


BAD_OPTIONS = [
    ("cfsp", "beta=-1", r"beta \(structured criterion 'cfsp'\) must be >= 0, got -1"),
    ("cfsp", "bta=0.5", "unknown option 'bta' in structured criterion 'cfsp'; did you mean 'beta'"),
    ("cfsp", "max_ratio=0", r"max_ratio \(structured criterion 'cfsp'\) must be"),
    ("magnitude", "p=0", r"p \(structured criterion 'magnitude'\) must be >= 1"),
    ("l1", "p=2", r"p \(structured criterion 'l1'\) must be one of 1"),
    ("random", "seed=1", "unknown option 'seed' in structured criterion 'random'"),
]


@pytest.mark.parametrize("method, option, needle", BAD_OPTIONS)
def test_bad_criterion_options_are_one_line_errors_before_the_model_loads(method, option, needle, tmp_path,
                                                                          monkeypatch, capsys):
    from prunekit import cli
    from prunekit.models import loading

    def never(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    for fn in ("load_model", "load_config", "load_tokenizer", "resolve_model_path"):
        monkeypatch.setattr(loading, fn, never)
    out = tmp_path / "out"
    code = cli.main(["prune", "--model", "smollm2-135m", "--out", str(out), "--structure", "mlp",
                     "--method", method, "--option", option])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert re.search(needle, err), err
    assert not out.exists()
    key, _, value = option.partition("=")
    with pytest.raises(PrunekitError, match=needle):  # the same check from Python and recipes
        StructuredStep(method=method, structure="mlp", options={key: json.loads(value)})


def test_prune_help_lists_the_structured_criteria(capsys):
    from prunekit import cli

    with pytest.raises(SystemExit):
        cli.main(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"with --structure: {', '.join(NAMES)}" in text
