"""Scores: hand-checked values, directions, never-learned forgetting, GraNd full vs closed form, duplicates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.data.dynamics import TrainingDynamics
from prunekit.data.scores import (
    aum_scores,
    duplicate_mask,
    el2n_from_logits,
    entropy_from_logits,
    forgetting_scores,
    grand_full,
    grand_last_layer,
    grand_scores,
    kcenter_scores,
    least_confidence_from_logits,
    margins_from_logits,
    random_scores,
    top2_margin_from_logits,
    vog_scores,
)

torch.set_num_threads(1)


def test_forgetting_counts_events_and_ranks_never_learned_highest():
    nan = np.nan
    hist = np.array([
        # ex0: learned, kept   ex1: forgotten twice   ex2: never learned   ex3: learned late   ex4: unseen gaps
        [1, 1, 0, 0, 1],
        [1, 0, 0, 0, nan],
        [1, 1, 0, 1, 0],
        [1, 0, 0, 1, nan],
    ], dtype=float)
    s = forgetting_scores(hist)
    assert s[0] == 0 and s[1] == 2 and s[3] == 0
    assert s[4] == 1  # 1 (t0) -> 0 (t2): NaN presentations are skipped, not treated as wrong
    assert s[2] == 4  # never learned: number of presentations, above any achievable count (<= 2)
    assert s[2] > s.max(initial=0, where=np.arange(5) != 2)


def test_aum_is_negated_mean_margin():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    labels = torch.tensor([0, 0])
    m = margins_from_logits(logits, labels)
    np.testing.assert_allclose(m, [2.0, -2.0])
    hist = np.stack([m, m + 1])
    np.testing.assert_allclose(aum_scores(hist), [-2.5, 1.5])  # the mislabeled-looking one is higher


def test_el2n_matches_definition():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    labels = torch.tensor([0, 1])
    e = el2n_from_logits(logits, labels)
    np.testing.assert_allclose(e[0], np.sqrt(0.5**2 * 2), rtol=1e-6)
    assert e[1] > 1.41  # confidently wrong: close to sqrt(2)


class Linear(nn.Module):
    """A model that *is* its last layer, so full GraNd equals the closed form exactly."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(x)

    def embed(self, x):
        return x


def test_grand_full_equals_last_layer_closed_form_for_a_linear_model():
    torch.manual_seed(0)
    model, x, y = Linear(), torch.randn(16, 5), torch.randint(0, 3, (16,))
    np.testing.assert_allclose(grand_full(model, x, y, batch_size=5), grand_last_layer(model, x, y), rtol=1e-5)


def test_grand_full_matches_autograd_on_a_cnn_and_averages_over_models():
    from prunekit.zoo import SmallCNN

    torch.manual_seed(0)
    models = [SmallCNN(width=4, hidden=8), SmallCNN(width=4, hidden=8)]
    x, y = torch.randn(3, 1, 28, 28), torch.tensor([0, 4, 9])
    ref = []
    for i in range(3):
        models[0].zero_grad()
        nn.functional.cross_entropy(models[0](x[i : i + 1]), y[i : i + 1]).backward()
        ref.append(torch.sqrt(sum(p.grad.pow(2).sum() for p in models[0].parameters())).item())
    np.testing.assert_allclose(grand_full(models[0], x, y), ref, rtol=1e-4)
    avg = grand_scores(models, x, y, mode="full")
    np.testing.assert_allclose(avg, (grand_full(models[0], x, y) + grand_full(models[1], x, y)) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="last_layer"):
        grand_scores(models, x, y, mode="bogus")


def test_uncertainty_scores_order_confident_below_uncertain():
    logits = torch.tensor([[5.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    for fn in (entropy_from_logits, top2_margin_from_logits, least_confidence_from_logits):
        s = fn(logits)
        assert s[1] > s[0], fn.__name__
    np.testing.assert_allclose(top2_margin_from_logits(logits)[1], 1.0, atol=1e-6)


def test_kcenter_finds_exact_duplicates():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 16))
    dup_of = rng.choice(300, size=20, replace=False)
    emb = np.concatenate([emb, emb[dup_of]])
    s = kcenter_scores(emb)
    dup = duplicate_mask(s)
    assert dup.sum() == 20  # exactly one copy of each pair scores 0, nothing else does
    pairs = {frozenset((int(i), 300 + j)) for j, i in enumerate(dup_of)}
    assert all(any(k in p for p in pairs) for k in np.flatnonzero(dup))


def test_vog_is_zero_for_identical_checkpoints_and_positive_otherwise():
    from prunekit.zoo import SmallCNN

    torch.manual_seed(0)
    a, b = SmallCNN(width=4, hidden=8), SmallCNN(width=4, hidden=8)
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(vog_scores([a, a], x, y, class_normalize=False), 0, atol=1e-12)
    raw = vog_scores([a, b], x, y, class_normalize=False)
    assert (raw > 0).all()
    norm = vog_scores([a, b], x, y)
    for c in (0, 1):
        assert abs(norm[y.numpy() == c].mean()) < 1e-9


def test_random_scores_are_seeded():
    np.testing.assert_array_equal(random_scores(10, 3), random_scores(10, 3))
    assert not np.array_equal(random_scores(10, 3), random_scores(10, 4))


def test_dynamics_records_last_presentation_per_epoch():
    d = TrainingDynamics(3)
    d.start_epoch()
    d.update(torch.tensor([0, 2]), torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    d.start_epoch()
    d.update(torch.tensor([0, 1, 2]), torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0, 0]))
    np.testing.assert_array_equal(d.forgetting(), [1, 0, 2])  # ex2 never learned -> 2 presentations
    restored = TrainingDynamics.from_state_dict(d.state_dict())
    np.testing.assert_array_equal(restored.aum(), d.aum())
