"""One structured graph: LLM and CNN groups are one type, scored, rounded and removed by the same code."""

import pytest
import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.families import adapter_for
from prunekit.core.registry import CRITERIA
from prunekit.structured.cnn import find_cnn_groups
from prunekit.structured.criteria import Criterion, ScoreContext
from prunekit.structured.graph import Group, Part, blocks_group, find_groups, kept_units
from prunekit.structured.shrink import remove_units
from prunekit.zoo import SmallCNN
from tests.conftest import tiny_model


def test_llm_and_cnn_groups_are_one_type():
    llm = find_groups(adapter_for(tiny_model("llama")))
    cnn = find_cnn_groups(SmallCNN().eval(), torch.randn(1, 1, 28, 28))
    assert {type(g) for g in llm + cnn} == {Group}
    assert {g.kind for g in llm} == {"mlp", "heads"} and {g.kind for g in cnn} == {"filters"}
    assert all(isinstance(p, Part) and p.index.shape[0] == g.n_units
               for g in llm + cnn for p in g.producers + g.passengers + g.consumers)


@pytest.mark.parametrize("kind", ["mlp", "filters"])
def test_one_rounding_rule_for_channels(kind):
    wide, narrow = Group(kind, 100), Group(kind, 6)
    assert [kept_units(wide, k, 8) for k in (1, 11, 12, 13, 100)] == [8, 8, 16, 16, 96]  # round half to even
    assert kept_units(narrow, 3, 8) == 6  # narrower than round_to: kept whole
    assert kept_units(wide, 0, 1) == 1 and kept_units(wide, 37, 1) == 37


def test_heads_are_whole_units_and_not_rounded():
    assert kept_units(Group("heads", 3, heads_per_unit=3), 2, 8) == 2


def test_one_entry_point_scores_every_kind():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    ctx = ScoreContext(generator=torch.Generator().manual_seed(0))
    magnitude = CRITERIA.build("magnitude")
    for group in find_groups(adapter):
        assert magnitude.score(group, ctx).shape == (group.n_units,)
    assert CRITERIA.build("random").score(blocks_group(adapter), ctx).shape == (len(adapter.blocks),)
    cnn = find_cnn_groups(SmallCNN().eval(), torch.randn(1, 1, 28, 28))
    assert all(magnitude.score(g, ctx).shape == (g.n_units,) for g in cnn)
    assert not hasattr(Criterion, "score_filters") and not hasattr(Criterion, "block_scores")


def test_a_criterion_for_channels_must_define_score():
    with pytest.raises(PrunekitError, match="declares structures .*'filters'.* but does not define score"):
        type("NoScore", (Criterion,), {"structures": frozenset({"filters"})})


def test_unit_sums_reads_rows_bias_and_columns_once_per_unit():
    producer, consumer = nn.Linear(3, 4), nn.Linear(4, 2, bias=False)
    for m in (producer, consumer):
        nn.init.constant_(m.weight, 1.0)
    nn.init.constant_(producer.bias, 10.0)
    rows = torch.arange(4).reshape(2, 2)
    group = Group("mlp", 2, [Part("p", producer, rows)], [Part("c", consumer, rows)])
    ones = group.unit_sums(lambda _name, w, b: (w, b))
    assert ones.tolist() == [2 * 3 + 2 * 10 + 2 * 2] * 2  # 2 rows of 3, their biases, 2 columns of 2
    group.bias_scored = False
    assert group.unit_sums(lambda _name, w, b: (w, b)).tolist() == [10.0, 10.0]


def test_removal_slices_a_consumer_shared_by_two_groups_once_and_keeps_requires_grad():
    a, b, head = nn.Linear(3, 4), nn.Linear(3, 2), nn.Linear(6, 1)
    a.weight.requires_grad_(False)
    col = torch.arange(6)
    first = Group("filters", 4, [Part("a", a, torch.arange(4)[:, None])], [Part("head", head, col[:4, None])])
    second = Group("filters", 2, [Part("b", b, torch.arange(2)[:, None])], [Part("head", head, col[4:, None])])
    expected = head.weight.data[:, [1, 3, 5]].clone()
    remove_units([(first, torch.tensor([1, 3])), (second, torch.tensor([1]))])
    assert (a.out_features, b.out_features, head.in_features) == (2, 1, 3)
    assert torch.equal(head.weight, expected) and not a.weight.requires_grad and b.weight.requires_grad
