"""Golden tests on real data: label noise on Fashion-MNIST, exact duplicates, SmolLM2 on Brown documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunekit.data.ids import example_ids
from prunekit.data.scores import duplicate_mask, kcenter_scores
from prunekit.data.select import select

torch.set_num_threads(1)


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Probability that a random positive outranks a random negative (Mann-Whitney U), ties = 1/2."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def noisy_fashion_scores(tmp_path_factory):
    """6,000 Fashion-MNIST images, 10% of labels flipped to another class, scored by one 4-epoch run."""
    from prunekit.data.pipeline import score_classifier
    from prunekit.core.data_sources import fashion_mnist

    x, y = fashion_mnist("train").tensors()
    x, y = x[:6000], y[:6000].clone()
    rng = np.random.default_rng(0)
    flipped = np.zeros(len(y), dtype=bool)
    flipped[rng.choice(len(y), size=600, replace=False)] = True
    y[flipped] = (y[flipped] + torch.as_tensor(rng.integers(1, 10, flipped.sum()))) % 10
    out = tmp_path_factory.mktemp("noisy")
    table = score_classifier(x, y, example_ids(x), ["el2n", "aum", "forgetting"], out, seeds=(0,), epochs=4,
                             score_epochs=(2,), progress=False)
    return table, flipped, out, (x, y)


@pytest.mark.slow
@pytest.mark.parametrize("score", ["el2n", "aum", "forgetting"])
def test_flipped_labels_rank_at_the_top(noisy_fashion_scores, score):
    table, flipped, _, _ = noisy_fashion_scores
    auc = roc_auc(table.vector(score), flipped)
    assert auc >= 0.9, f"{score}: ROC AUC {auc:.3f}"


@pytest.mark.slow
def test_scoring_resumes_from_saved_checkpoints(noisy_fashion_scores):
    """A rerun of the same scoring finds every checkpoint on disk and retrains nothing; other labels are refused."""
    from prunekit.core.errors import PrunekitError
    from prunekit.data.pipeline import score_classifier
    from prunekit.core.data_sources import fashion_mnist

    table, _, out, (x, y) = noisy_fashion_scores
    calls = []
    again = score_classifier(x, y, example_ids(x), ["el2n", "aum", "forgetting"], out,
                             seeds=(0,), epochs=4, score_epochs=(2,), progress=False,
                             model_fn=lambda: calls.append(1))
    assert calls == []
    np.testing.assert_array_equal(again.vector("aum"), table.vector("aum"))
    clean_x, clean_y = fashion_mnist("train").tensors()  # the same images without the flipped labels
    with pytest.raises(PrunekitError, match="labels="):
        score_classifier(clean_x[:6000], clean_y[:6000], example_ids(clean_x[:6000]), ["el2n", "aum", "forgetting"],
                         out, seeds=(0,), epochs=4, score_epochs=(2,), progress=False)


@pytest.mark.slow
def test_geometry_score_finds_exact_duplicates_in_fashion_mnist():
    from prunekit.core.data_sources import fashion_mnist

    x, _ = fashion_mnist("test").tensors()
    x = x[:1000]
    src = np.random.default_rng(1).choice(1000, size=15, replace=False)
    x = torch.cat([x, x[src]])
    s = kcenter_scores(x.flatten(1))
    dup = np.flatnonzero(duplicate_mask(s))
    assert len(dup) == 15
    for d in dup:  # each flagged example is one copy of a planted pair
        partner = 1000 + np.flatnonzero(src == d)[0] if d < 1000 else src[d - 1000]
        assert torch.equal(x[d], x[partner])
    kept = select(s, 1000, "hardest")  # pruning the 15 lowest scores removes exactly one copy of each
    assert len({example_ids(x[i : i + 1])[0] for i in kept}) == 1000


@pytest.fixture(scope="module")
def smollm2():
    from prunekit.data.text import load_lm

    try:
        return load_lm("smollm2-135m")
    except (FileNotFoundError, OSError) as e:  # pragma: no cover - asset missing
        pytest.skip(f"SmolLM2-135M not available: {e}")


@pytest.mark.slow
def test_smollm2_scores_brown_documents_and_selectors_filter_the_corpus(smollm2):
    from prunekit.data.table import ScoreTable
    from prunekit.data.text import brown_documents, lm_document_scores

    model, tok = smollm2
    docs = [text for _, text in brown_documents(limit=3, max_words=60)]
    words = docs[0].split()
    scrambled = " ".join(np.random.default_rng(0).permutation(words))
    texts = [*docs, scrambled]
    res = lm_document_scores(model, tok, texts, max_tokens=64)
    assert np.all(np.isfinite(res["lm_loss"])) and np.allclose(res["perplexity"], np.exp(res["lm_loss"]))
    assert res["lm_loss"][3] > res["lm_loss"][0] + 1.0  # word salad is much less likely than real prose
    table = ScoreTable(manifest={"dataset": "brown"})
    table.add("lm_loss", res["lm_loss"], example_ids(texts))
    kept = select(table.vector("lm_loss"), 3, "easiest")
    assert list(kept) == [0, 1, 2]


@pytest.mark.slow
def test_cli_scores_brown_with_smollm2(tmp_path, capsys):
    from prunekit.data.cli import main
    from prunekit.data.table import ScoreTable

    out = tmp_path / "brown"
    assert main(["data", "score", "--dataset", "brown", "--scores", "lm_loss,perplexity", "--limit", "2",
                 "--max-tokens", "32", "--no-progress", "--out", str(out)]) == 0
    t = ScoreTable.load(out)
    assert t.n_examples() == 2 and set(t.score_names) == {"lm_loss", "perplexity"}
    assert t.manifest["documents"] == ["ca01", "ca02"]


@pytest.mark.slow
def test_cli_trains_on_a_selection_with_kd_on_real_mnist(tmp_path):
    import json

    from prunekit.data.cli import main
    from prunekit.data.select import Selection
    from prunekit.core.data_sources import mnist

    n = len(mnist("train"))
    keep = select(np.zeros(n), 0.3, "random", seed=0)
    Selection(keep, n).save(tmp_path / "keep.npz")
    out = tmp_path / "train"
    assert main(["data", "train", "--dataset", "mnist", "--selection", str(tmp_path / "keep.npz"), "--budget",
                 "equal-iterations", "--epochs", "1", "--kd", "--no-progress", "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["budget"] == "equal-iterations" and res["steps"] == -(-n // 128)  # as many steps as 1 full epoch
    assert res["kd"]["alpha"] == pytest.approx(0.5 + 0.3 * (1 - len(keep) / n)) and res["kd"]["temperature"] == 2.0
    assert res["test_accuracy"] > 0.8
