"""Every registered data score and selector, one test row each (the rows come from the registries).

Scores run through the real pipeline on a tiny planted dataset: two Gaussian blobs, one example of
blob 0 whose label is flipped to 1 (mislabelled) and one outlier far out on the decision boundary
(ambiguous and atypical). Each score declares which examples its highest values pick out (``flags``):
a score that flags mislabelled examples must rank the flipped one among the hardest, one that flags
ambiguous or atypical examples the outlier; one that flags examples with unstable input gradients
(VoG) must rank highest the example whose gradients vary most over hand-made checkpoints; random
flags nothing and is checked for shape and seeding only. Text scores use a tiny bigram LM on which
one planted document is gibberish.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.core.recipe import parse_step
from prunekit.core.registry import SCORES, SELECTORS
from prunekit.data.ids import example_ids
from prunekit.data.pipeline import classifier_scores, score_classifier
from prunekit.data.scores import ScoreContext
from prunekit.data.select import SelectionStep, apply_recipe, class_quotas, select
from prunekit.data.text import lm_document_scores, text_scores

torch.set_num_threads(1)
N_BLOB = 100
MISLABELLED = 0  # index of the flipped label
OUTLIER = 2 * N_BLOB  # index of the outlier on the boundary
TOP = 5  # "among the hardest": within the 5 highest of 201 scores


def planted_blobs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(N_BLOB, 2, generator=g) * 0.5 + torch.tensor([-2.0, 0.0]),
                   torch.randn(N_BLOB, 2, generator=g) * 0.5 + torch.tensor([2.0, 0.0]),
                   torch.tensor([[0.0, 4.0]])])
    y = torch.cat([torch.zeros(N_BLOB), torch.ones(N_BLOB), torch.zeros(1)]).long()
    x[MISLABELLED] = torch.tensor([-2.0, 0.0])  # the centre of blob 0 ...
    y[MISLABELLED] = 1  # ... labelled as blob 1
    return x, y


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.embed(x))


def run_pipeline(folder, seed: int) -> dict[str, np.ndarray]:
    x, y = planted_blobs()
    table = score_classifier(x, y, example_ids(x), classifier_scores(), folder, seeds=(seed,), epochs=4,
                             score_epochs=(1, 2), model_fn=MLP, batch_size=16, lr=0.1, kcenter_centers=None,
                             progress=False, fmt="npz")
    return {name: table.vector(name) for name in table.score_names}


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scores")
    return run_pipeline(root / "a", 0), run_pipeline(root / "b", 0), run_pipeline(root / "c", 1)


class CharTokenizer:
    """Characters a-z as token ids 0-25 (everything else dropped)."""

    def __call__(self, text, return_tensors="pt", truncation=True, max_length=256):
        ids = [ord(c) - 97 for c in text if "a" <= c <= "z"][:max_length]
        return {"input_ids": torch.tensor([ids])}


class BigramLM(nn.Module):
    """Predicts that letter c is followed by letter c + 1: the alphabet is typical, gibberish is not."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.full((26, 26), -4.0) + 8.0 * torch.roll(torch.eye(26), 1, dims=1))

    def forward(self, input_ids):
        return types.SimpleNamespace(logits=self.table[input_ids])


def documents() -> list[str]:
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    docs = [(alphabet * 3)[i : i + 40] for i in range(12)]
    docs[5] = "".join(np.random.default_rng(0).choice(list(alphabet), 40))  # the planted atypical document
    return docs


def hardest_rank(values: np.ndarray, index: int) -> int:
    """0 = the highest value (ties broken against the planted example)."""
    return int((values >= values[index]).sum()) - 1


class Quadratic(nn.Module):
    """z = (x * x) W^T, so d z_y / d x = 2 x * W_y: the gradient grows with |x| as W changes."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return (x * x) @ self.weight.T


def unstable_checkpoints(x, y) -> ScoreContext:
    """Checkpoints whose weights grow, so the input gradients vary most for the largest |x| (the outlier)."""
    checkpoints = [Quadratic(torch.ones(2, 2) * (1 + t)) for t in range(4)]
    return ScoreContext(x=x, y=y, model=checkpoints[-1], checkpoints=checkpoints)


PLANTED = {"mislabelled": MISLABELLED, "ambiguous": OUTLIER, "atypical": OUTLIER}


@pytest.mark.parametrize("name", SCORES.names())
def test_every_score_has_shape_seeding_and_direction(name, pipeline_runs):
    score = SCORES.build(name)
    assert score.direction.startswith("higher=harder")
    if score.stage() == "text":
        docs = documents()
        values = lm_document_scores(BigramLM(), CharTokenizer(), docs, max_tokens=32, names=[name])[name]
        again = lm_document_scores(BigramLM(), CharTokenizer(), docs, max_tokens=32, names=[name])[name]
        assert values.shape == (len(docs),) and np.isfinite(values).all()
        np.testing.assert_array_equal(values, again)
        assert hardest_rank(values, 5) == 0, values
        return
    first, same_seed, other_seed = (run[name] for run in pipeline_runs)
    assert first.shape == (2 * N_BLOB + 1,) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, same_seed)  # same seed, same scores
    assert not np.array_equal(first, other_seed)  # the seed matters
    if score.flags in PLANTED:
        rank = hardest_rank(first, PLANTED[score.flags])
        assert rank < TOP, f"{name} ranks the planted {score.flags} example at {rank}"
    elif score.flags == "unstable":
        assert hardest_rank(score(unstable_checkpoints(*planted_blobs())), OUTLIER) == 0
    else:
        assert score.flags == "nothing"


def test_text_and_classifier_scores_partition_the_registry():
    assert sorted(classifier_scores() + text_scores()) == SCORES.names()
    assert {"lm_loss", "perplexity"} <= set(text_scores())


# ---------------------------------------------------------------------------------- selectors
N = 600
RNG = np.random.default_rng(1)
VALUES = RNG.normal(size=N)
LABELS = np.repeat([0, 1, 2], [350, 200, 50])
RNG.shuffle(LABELS)


@pytest.mark.parametrize("name", SELECTORS.names())
@pytest.mark.parametrize("keep", [0.1, 0.45, 1.0, 77])
@pytest.mark.parametrize("balanced", [False, True])
def test_every_selector_keeps_the_exact_count_balanced_and_deterministic(name, keep, balanced):
    k = round(keep * N) if isinstance(keep, float) else keep
    idx = select(VALUES, keep, name, labels=LABELS, class_balanced=balanced, seed=3)
    assert len(idx) == k and len(np.unique(idx)) == k and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, select(VALUES, keep, name, labels=LABELS, class_balanced=balanced, seed=3))
    if balanced:
        assert {c: int((LABELS[idx] == c).sum()) for c in range(3)} == class_quotas(LABELS, k)


@pytest.mark.parametrize("name", SELECTORS.names())
def test_every_selector_option_is_checked_by_the_registry(name):
    for opt in SELECTORS.options(name):
        with pytest.raises(ValueError, match=f"{opt.name}.*selector '{name}'.*got 'not a number'"):
            SELECTORS.build(name, {opt.name: "not a number"})
    with pytest.raises(ValueError, match=f"unknown option 'nope'.*selector '{name}'"):
        SELECTORS.build(name, {"nope": 1})


# ---------------------------------------------------------------------------------- the recipe step
def test_selection_step_round_trips_and_aliases_mean_the_same():
    step = parse_step({"kind": "selection", "selector": "ccs", "sparsity": 0.7, "options": {"bins": 5},
                       "class_balanced": True, "seed": 2})
    assert isinstance(step, SelectionStep) and step.options == {"bins": 5}
    assert parse_step(step.to_dict()) == step
    legacy = parse_step({"kind": "selection", "method": "ccs", "keep": 0.3, "options": {"bins": 5},
                         "class_balanced": True, "seed": 2})
    assert legacy.selector == "ccs" and legacy.kept(N) == step.kept(N) == 180
    np.testing.assert_array_equal(apply_recipe(VALUES, [step], labels=LABELS).indices,
                                  apply_recipe(VALUES, [{"method": "ccs", "keep": 0.3, "bins": 5,
                                                         "class_balanced": True, "seed": 2}], labels=LABELS).indices)


@pytest.mark.parametrize(("data", "message"), [
    ({"sparsity": 0.5, "keep": 0.5}, "not both"),
    ({}, "give sparsity"),
    ({"sparsity": 0.5, "selector": "ccs", "method": "band"}, "'selector' twice"),
    ({"keep": 2.5}, "neither a fraction"),
    ({"sparsity": 0.5, "selector": "bnad"}, "did you mean 'band'"),
    ({"sparsity": 0.5, "selector": "band", "options": {"offset": 1.0}}, "offset.*selector 'band'.*got 1.0"),
    ({"sparsity": 0.5, "keepp": 0.5}, "unknown key 'keepp'"),
])
def test_bad_selection_steps_are_one_line_errors(data, message):
    with pytest.raises(ValueError, match=message):
        parse_step({"kind": "selection", **data})
