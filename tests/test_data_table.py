"""Score table: stable ids survive shuffling, Parquet/NPZ round trips, aggregation, seed stability."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prunekit.data.ids import align, example_ids
from prunekit.data.table import ScoreTable, stability_report


def _toy(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _score(x):  # a per-example score that depends only on the example's content
    return x.float().flatten(1).sum(1).numpy()


def test_ids_map_scores_back_to_the_original_order_after_shuffling():
    x, y = _toy()
    x[7] = x[3]  # an exact duplicate shares a hash; it must still map correctly
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    xs, ys = x[perm], y[perm]
    table = ScoreTable()
    table.add("s", _score(xs), example_ids(xs), labels=ys.tolist(), seed=0)
    back = table.vector_for("s", example_ids(x))
    np.testing.assert_allclose(back, _score(x))
    # without the hash, the index alone would be wrong
    assert not np.allclose(table.vector("s"), _score(x))
    with pytest.raises(KeyError):
        align(example_ids(xs[:10]), _score(xs[:10]), example_ids(x))


def test_content_hash_ignores_position_and_sees_content():
    x, _ = _toy()
    ids = example_ids(x)
    assert ids == example_ids(x.clone())
    x2 = x.clone()
    x2[0, 0, 0] ^= 1
    assert example_ids(x2)[0] != ids[0] and example_ids(x2)[1:] == ids[1:]


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_round_trip_with_manifest(tmp_path, fmt):
    x, y = _toy()
    t = ScoreTable(manifest={"dataset": "toy"})
    h = example_ids(x)
    for seed in (0, 1):
        for ck in (1, 2):
            t.add("el2n", _score(x) + seed + ck, h, labels=y.tolist(), seed=seed, checkpoint=ck)
    t.add("aum", -_score(x), h, labels=y.tolist(), seed=0, direction="higher=harder (stored as -AUM)")
    path = t.save(tmp_path, fmt)
    assert path.name == f"scores.{fmt}"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["dataset"] == "toy" and manifest["n_examples"] == len(x) and manifest["format"] == fmt
    assert manifest["scores"]["aum"]["direction"].startswith("higher=harder")
    back = ScoreTable.load(tmp_path)
    assert len(back) == len(t) == 5 * len(x)
    # mean over 2 seeds x 2 checkpoints of (s + seed + ck) = s + 0.5 + 1.5
    np.testing.assert_allclose(back.vector("el2n"), _score(x) + 2.0)
    np.testing.assert_allclose(back.vector("el2n", seed=1, checkpoint=2), _score(x) + 3.0)
    np.testing.assert_allclose(back.vector("el2n", aggregate="max"), _score(x) + 3.0)
    np.testing.assert_array_equal(back.labels(), y.numpy())
    assert back.runs("el2n") == [(0, 1), (0, 2), (1, 1), (1, 2)]
    with pytest.raises(KeyError, match="available"):
        back.vector("nope")


def test_stability_report_spearman_and_kendall():
    x, _ = _toy(200)
    h = example_ids(x)
    t = ScoreTable()
    base = _score(x)
    t.add("stable", base, h, seed=0)
    t.add("stable", 2 * base + 1, h, seed=1)  # monotone transform: perfect rank agreement
    rng = np.random.default_rng(0)
    t.add("noise", rng.random(200), h, seed=0)
    t.add("noise", rng.random(200), h, seed=1)
    rep = {r["score"]: r for r in stability_report(t)}
    assert rep["stable"]["spearman"] == pytest.approx(1.0) and rep["stable"]["kendall"] == pytest.approx(1.0)
    assert abs(rep["noise"]["spearman"]) < 0.2
