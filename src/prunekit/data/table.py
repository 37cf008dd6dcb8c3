"""The score table: one row per (example, score, seed, checkpoint), keyed by a stable id.

Columns: ``id`` (``"<index>:<hash>"``), ``index`` (position in the dataset as it was scored),
``hash`` (content hash, see :mod:`prunekit.data.ids`), ``label``, ``score`` (name), ``value``,
``seed``, ``checkpoint`` (epoch or step; -1 when not applicable) and ``direction`` (always
``"higher=harder"`` plus a note for scores whose sign was flipped, e.g. AUM).

Saved as ``scores.parquet`` (if pyarrow is available) or ``scores.npz``, next to a
``manifest.json`` describing the dataset, scores, seeds and format. Rows can be appended one
checkpoint at a time, which is what makes scoring resumable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.core.errors import PrunekitError, UnknownKey
from prunekit.data.ids import align, make_id

COLUMNS = ("id", "index", "hash", "label", "score", "value", "seed", "checkpoint", "direction")
AGGREGATES = ("mean", "median", "max", "min")


@dataclass
class ScoreTable:
    """Long-format per-example scores plus a manifest (free-form metadata)."""

    rows: dict[str, list] = field(default_factory=lambda: {c: [] for c in COLUMNS})
    manifest: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ building
    def add(
        self,
        score: str,
        values: np.ndarray,
        hashes: Sequence[str],
        *,
        labels: Sequence[int] | None = None,
        seed: int = -1,
        checkpoint: int = -1,
        direction: str = "higher=harder",
        indices: Sequence[int] | None = None,
    ) -> None:
        """Append one score vector (one value per example, in dataset order unless ``indices``)."""
        values = np.asarray(values, dtype=np.float64)
        if len(values) != len(hashes):
            raise PrunekitError(f"{len(values)} values but {len(hashes)} example hashes")
        indices = np.arange(len(values)) if indices is None else np.asarray(indices)
        labels = [-1] * len(values) if labels is None else list(labels)
        self.rows["id"] += [make_id(i, h) for i, h in zip(indices, hashes)]
        self.rows["index"] += [int(i) for i in indices]
        self.rows["hash"] += list(hashes)
        self.rows["label"] += [int(v) for v in labels]
        self.rows["score"] += [score] * len(values)
        self.rows["value"] += values.tolist()
        self.rows["seed"] += [int(seed)] * len(values)
        self.rows["checkpoint"] += [int(checkpoint)] * len(values)
        self.rows["direction"] += [direction] * len(values)

    def __len__(self) -> int:
        return len(self.rows["id"])

    # ------------------------------------------------------------------ reading
    def _arrays(self) -> dict[str, np.ndarray]:
        return {c: np.asarray(v) for c, v in self.rows.items()}

    @property
    def score_names(self) -> list[str]:
        return sorted(set(self.rows["score"]))

    def n_examples(self) -> int:
        return len(set(self.rows["index"]))

    def runs(self, score: str) -> list[tuple[int, int]]:
        """The (seed, checkpoint) pairs recorded for ``score``."""
        a = self._arrays()
        m = a["score"] == score
        return sorted(set(zip(a["seed"][m].tolist(), a["checkpoint"][m].tolist())))

    def vector(self, score: str, seed: int | None = None, checkpoint: int | None = None,
               aggregate: str = "mean") -> np.ndarray:
        """Scores in dataset-index order, aggregated over the selected seeds/checkpoints."""
        if aggregate not in AGGREGATES:
            raise PrunekitError(f"aggregate {aggregate!r} is not one of {', '.join(AGGREGATES)}")
        a = self._arrays()
        m = a["score"] == score
        if not m.any():
            raise UnknownKey(f"score {score!r} not in table; available: {', '.join(self.score_names) or 'none'}")
        if seed is not None:
            m &= a["seed"] == seed
        if checkpoint is not None:
            m &= a["checkpoint"] == checkpoint
        if not m.any():
            raise UnknownKey(f"score {score!r} has no rows for seed={seed}, checkpoint={checkpoint}")
        n = int(a["index"].max()) + 1
        idx, val = a["index"][m], a["value"][m].astype(np.float64)
        runs = list(zip(a["seed"][m].tolist(), a["checkpoint"][m].tolist()))
        keys = sorted(set(runs))
        mat = np.full((len(keys), n), np.nan)
        pos = {k: i for i, k in enumerate(keys)}
        mat[[pos[r] for r in runs], idx] = val
        return getattr(np, f"nan{aggregate}")(mat, axis=0)

    def hashes(self) -> list[str]:
        """Content hash per dataset index."""
        a = self._arrays()
        n = int(a["index"].max()) + 1
        out = [""] * n
        for i, h in zip(a["index"].tolist(), a["hash"].tolist()):
            out[i] = h
        return out

    def labels(self) -> np.ndarray:
        a = self._arrays()
        out = np.full(int(a["index"].max()) + 1, -1, dtype=np.int64)
        out[a["index"]] = a["label"]
        return out

    def vector_for(self, score: str, target_hashes: Sequence[str], **kwargs) -> np.ndarray:
        """Scores reordered to another ordering of the same examples (matched by content hash)."""
        return align(self.hashes(), self.vector(score, **kwargs), target_hashes)

    def direction(self, score: str) -> str:
        a = self._arrays()
        return str(a["direction"][a["score"] == score][0])

    # ------------------------------------------------------------------ I/O
    def save(self, folder: str | Path, fmt: str = "parquet") -> Path:
        """Write ``scores.parquet`` or ``scores.npz`` and ``manifest.json`` into ``folder``."""
        if fmt not in ("parquet", "npz"):
            raise PrunekitError(f"format {fmt!r} is not one of parquet, npz")
        from prunekit.core.io import replace_file, write_json

        folder = Path(folder)
        a = self._arrays()
        path = folder / f"scores.{fmt}"
        with replace_file(path) as tmp:
            if fmt == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({c: a[c] for c in COLUMNS}), tmp)
            else:
                with tmp.open("wb") as f:  # a file object: np.savez would append .npz to a path
                    np.savez(f, **{c: a[c] for c in COLUMNS})
        manifest = {
            **self.manifest,
            "format": fmt,
            "file": path.name,
            "columns": list(COLUMNS),
            "scores": {s: {"direction": self.direction(s), "runs": self.runs(s)} for s in self.score_names},
            "n_examples": self.n_examples(),
            "n_rows": len(self),
        }
        with replace_file(folder / "manifest.json") as tmp:
            write_json(tmp, manifest)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ScoreTable:
        """Read a table written by :meth:`save`; a missing, foreign or tampered one is a one-line error."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            if not isinstance(manifest, dict):
                raise PrunekitError("manifest.json is not a mapping")
            fmt, name = manifest.get("format"), manifest.get("file")
            if fmt not in ("parquet", "npz") or name != f"scores.{fmt}":
                raise PrunekitError(f"manifest.json names format {fmt!r} and file {name!r}; expected parquet or npz "
                                 "and scores.<format>")
            path = folder / name
            if fmt == "parquet":
                import pyarrow.parquet as pq

                cols = pq.read_table(path).to_pydict()
            else:
                with np.load(path, allow_pickle=False) as f:
                    cols = {c: f[c].tolist() for c in COLUMNS if c in f.files}
            missing = [c for c in COLUMNS if c not in cols]
            if missing:
                raise PrunekitError(f"{name} lacks the column(s) {missing}")
            rows = {c: list(cols[c]) for c in COLUMNS}
            _check_rows(rows)
        except Exception as exc:  # noqa: BLE001 - whatever is broken, the answer is one line naming the folder
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PrunekitError(f"{str(folder)!r} is not a readable prunekit score table ({first})") from None
        extra = {k: v for k, v in manifest.items() if k not in ("format", "file", "columns", "scores",
                                                                   "n_examples", "n_rows")}
        return cls(rows, extra)


def _check_rows(rows: dict[str, list]) -> None:
    """Columns of one length, integer indices in [0, rows), numeric values, string names: no surprises later."""
    n = len(rows["id"])
    if n == 0:
        raise PrunekitError("the table has no rows")
    if any(len(v) != n for v in rows.values()):
        raise PrunekitError("its columns have different lengths")
    for c in ("index", "label", "seed", "checkpoint"):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in rows[c]):
            raise PrunekitError(f"column {c!r} holds non-integers")
    if min(rows["index"]) < 0 or max(rows["index"]) >= n:
        raise PrunekitError(f"column 'index' is out of range [0, {n})")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rows["value"]):
        raise PrunekitError("column 'value' holds non-numbers")
    for c in ("id", "hash", "score", "direction"):
        if not all(isinstance(v, str) for v in rows[c]):
            raise PrunekitError(f"column {c!r} holds non-strings")


def stability_report(table: ScoreTable, score: str | None = None) -> list[dict[str, Any]]:
    """Rank agreement between seeds: Spearman's rho and Kendall's tau for every pair of seeds.

    For each score, the per-seed vector is the mean over that seed's checkpoints. Kendall's tau
    is computed on at most 20,000 examples (a fixed random sample) to keep it fast.
    """
    from scipy.stats import kendalltau, spearmanr

    out = []
    for name in [score] if score else table.score_names:
        seeds = sorted({s for s, _ in table.runs(name)})
        vecs = {s: table.vector(name, seed=s) for s in seeds}
        sample = np.random.default_rng(0).permutation(len(vecs[seeds[0]]))[:20000] if seeds else None
        for i, a in enumerate(seeds):
            for b in seeds[i + 1 :]:
                va, vb = vecs[a], vecs[b]
                out.append({
                    "score": name, "seed_a": a, "seed_b": b,
                    "spearman": float(spearmanr(va, vb).statistic),
                    "kendall": float(kendalltau(va[sample], vb[sample]).statistic),
                })
    return out
