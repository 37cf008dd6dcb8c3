"""Selectors: turn a score vector (higher = harder) into the set of examples to keep.

Every selector takes the candidate pool (dataset indices), the scores of the whole dataset and an
exact number to keep, and returns exactly that many indices:

* ``hardest`` / ``easiest`` -- the top / bottom of the ranking (Paul et al. 2021 keep the hardest).
* ``band`` -- a middle band: skip the ``offset`` fraction of hardest, keep the next ones.
* ``ccs`` -- Coverage-centric Coreset Selection (Zheng et al., ICLR 2023, Algorithm 1): drop the
  hardest ``beta`` fraction of the dataset (mislabeled / unlearnable examples), split the remaining
  score range into ``bins`` equal-width strata, then fill the budget stratum by stratum from the
  sparsest one up, each taking ``min(|stratum|, budget_left / strata_left)`` examples at random.
* ``random`` -- uniform without replacement.

``class_balanced=True`` wraps any of them: exact per-class quotas summing to the budget
(proportional to the class sizes *in the candidate pool*, largest-remainder rounding, capped by what
each class has), then the selector runs inside each class.

A recipe is a list of steps, each narrowing the pool of the previous one, e.g.::

    [{"method": "easiest", "keep": 0.9},                       # drop the 10% hardest
     {"method": "ccs", "keep": 0.3, "bins": 50, "class_balanced": true}]

``keep`` is a fraction of the *whole dataset* (``0 < keep <= 1``) or an integer count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from prunekit.core.errors import PrunekitError

METHODS = ("hardest", "easiest", "band", "ccs", "random")
STEP_KEYS = {"method", "keep", "offset", "beta", "bins", "class_balanced", "seed"}


def ccs_default_beta(fraction_removed: float) -> float:
    """Default CCS hard cutoff: none up to 50% removed, then growing to 0.3 at 90% removed.

    Interpolates the cutoffs Zheng et al. (2023) report as best on CIFAR-10 (0 at 30-50%,
    ~0.1 at 70%, ~0.3 at 90%); it never exceeds the removed fraction.
    """
    pts_x, pts_y = [0.0, 0.5, 0.7, 0.9, 1.0], [0.0, 0.0, 0.1, 0.3, 0.4]
    return float(min(np.interp(fraction_removed, pts_x, pts_y), fraction_removed))


def _order(pool: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pool sorted hardest first; ties broken at random (not by index, which is class-biased)."""
    tiebreak = rng.random(len(pool))
    return pool[np.lexsort((tiebreak, -scores[pool]))]


def select_hardest(pool, scores, k, rng, **_):
    return _order(pool, scores, rng)[:k]


def select_easiest(pool, scores, k, rng, **_):
    return _order(pool, scores, rng)[::-1][:k]


def select_band(pool, scores, k, rng, offset: float = 0.0, n_total: int | None = None, **_):
    """Skip the ``offset`` hardest (a fraction of the dataset), keep the next ``k``."""
    skip = round(offset * (n_total or len(pool)))
    ranked = _order(pool, scores, rng)
    if skip + k > len(ranked):
        raise PrunekitError(f"band offset {offset} + keep {k} exceeds the {len(ranked)} candidates")
    return ranked[skip : skip + k]


def select_random(pool, scores, k, rng, **_):
    return rng.choice(pool, size=k, replace=False)


def select_ccs(pool, scores, k, rng, beta: float = 0.0, bins: int = 50, n_total: int | None = None, **_):
    """Zheng et al. (2023), Algorithm 1 (see module docstring)."""
    n_cut = round(beta * (n_total or len(pool)))
    ranked = _order(pool, scores, rng)
    kept_pool = ranked[n_cut:]
    if k > len(kept_pool):
        raise PrunekitError(f"CCS: cannot keep {k} after cutting the {n_cut} hardest of {len(pool)} candidates")
    s = scores[kept_pool]
    lo, hi = float(s.min()), float(s.max())
    edges = np.linspace(lo, hi, bins + 1)
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)
    strata = [kept_pool[which == b] for b in range(bins)]
    strata = sorted((st for st in strata if len(st)), key=len)
    chosen, budget = [], k
    for i, st in enumerate(strata):
        take = min(len(st), budget // (len(strata) - i))
        chosen.append(rng.choice(st, size=take, replace=False))
        budget -= take
    out = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
    if budget > 0:  # floor division can leave a few slots; top up uniformly from the rest
        rest = np.setdiff1d(kept_pool, out)
        out = np.concatenate([out, rng.choice(rest, size=budget, replace=False)])
    return out


SELECTORS = {
    "hardest": select_hardest, "easiest": select_easiest, "band": select_band,
    "ccs": select_ccs, "random": select_random,
}


def class_quotas(labels: np.ndarray, k: int) -> dict[int, int]:
    """Exact per-class quotas summing to ``k``, proportional to the class counts in ``labels``.

    Largest-remainder rounding; a class never gets more than it has (the excess goes to the
    classes with room, again by largest remainder). Each class's quota uses *its own* count.
    """
    classes, counts = np.unique(labels, return_counts=True)
    if k > counts.sum():
        raise PrunekitError(f"cannot keep {k} of {counts.sum()} examples")
    quota = np.zeros(len(classes), dtype=np.int64)
    room = counts.copy()
    left = k
    while left > 0:
        open_ = room > 0
        ideal = left * counts * open_ / counts[open_].sum()
        add = np.minimum(np.floor(ideal).astype(np.int64), room)
        short = left - add.sum()
        frac = np.where(open_ & (room > add), ideal - np.floor(ideal), -1.0)
        for j in np.argsort(-frac, kind="stable")[: max(short, 0)]:
            if frac[j] >= 0:
                add[j] += 1
        if add.sum() == 0:  # every remainder was 0: give one to the largest class with room
            add[np.argmax(np.where(room > 0, room, -1))] += 1
        quota += add
        room -= add
        left = k - quota.sum()
    return {int(c): int(q) for c, q in zip(classes, quota)}


def _resolve_keep(keep: float, n_total: int) -> int:
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise TypeError(f"keep must be a number, got {keep!r}")
    if isinstance(keep, (float, np.floating)) and 0 < keep <= 1:
        k = round(keep * n_total)
        if k == 0:
            raise PrunekitError(f"keep {keep!r} of {n_total} examples rounds to 0 kept; keep a larger fraction")
        return k
    if float(keep).is_integer() and 1 <= keep <= n_total:
        return int(keep)
    raise PrunekitError(f"keep {keep!r} is neither a fraction in (0, 1] nor a count in [1, {n_total}]")


def select(
    scores: np.ndarray,
    keep: float,
    method: str = "hardest",
    *,
    labels: np.ndarray | None = None,
    class_balanced: bool = False,
    pool: np.ndarray | None = None,
    seed: int = 0,
    **options: Any,
) -> np.ndarray:
    """Indices (sorted) of exactly ``keep`` examples chosen from ``pool`` by ``method``."""
    if method not in SELECTORS:
        raise PrunekitError(f"selector {method!r} is not one of {', '.join(METHODS)}")
    scores = np.asarray(scores, dtype=np.float64)
    n_total = len(scores)
    pool = np.arange(n_total) if pool is None else np.asarray(pool, dtype=np.int64)
    k = _resolve_keep(keep, n_total)
    if k > len(pool):
        raise PrunekitError(f"cannot keep {k} examples from a pool of {len(pool)}")
    rng = np.random.default_rng(seed)
    fn = SELECTORS[method]
    if not class_balanced:
        return np.sort(fn(pool, scores, k, rng, n_total=n_total, **options))
    if labels is None:
        raise ValueError("class_balanced selection needs labels")
    labels = np.asarray(labels)
    quotas = class_quotas(labels[pool], k)
    parts = []
    for c, q in quotas.items():
        members = pool[labels[pool] == c]
        if q == 0:
            continue
        share = len(members) / len(pool)  # scale dataset-level fractions (beta, offset) to the class
        parts.append(fn(members, scores, q, rng, n_total=round(n_total * share), **options))
    return np.sort(np.concatenate(parts))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and bool(np.isfinite(v))


def _is_whole(v: Any) -> bool:
    return _is_number(v) and float(v).is_integer()


def validate_recipe(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check a recipe's steps; raise :class:`PrunekitError` naming the bad key/value and what is accepted."""
    if isinstance(steps, Mapping):
        steps = steps.get("steps", [steps])
    if not isinstance(steps, (list, tuple)):
        raise PrunekitError(f"recipe steps must be a list of mappings, got {type(steps).__name__} {steps!r:.60}")
    out = []
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            raise PrunekitError(f"recipe step {i} must be a mapping such as {{method: ccs, keep: 0.3}}, "
                                f"got {type(step).__name__} {step!r:.60}")
        step = dict(step)
        unknown = set(map(str, step)) - STEP_KEYS
        if unknown:
            raise PrunekitError(f"recipe step {i}: unknown key(s) {sorted(unknown)}; choices: {sorted(STEP_KEYS)}")
        method = step.get("method", "hardest")
        if not isinstance(method, str) or method not in SELECTORS:
            raise PrunekitError(f"recipe step {i}: method {method!r} is not one of {', '.join(METHODS)}")
        if "keep" not in step:
            raise PrunekitError(f"recipe step {i}: missing 'keep' (a fraction in (0, 1] or a whole count >= 1)")
        keep = step["keep"]
        if not (_is_number(keep) and (0 < keep <= 1 or (keep >= 1 and _is_whole(keep)))):
            raise PrunekitError(f"recipe step {i}: keep {keep!r} is neither a fraction in (0, 1] nor a whole count >= 1")
        checks = {
            "beta": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)", "ccs"),
            "offset": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)", "band"),
            "bins": (lambda v: _is_whole(v) and v >= 1, "a whole number >= 1", "ccs"),
            "seed": (lambda v: _is_whole(v) and 0 <= v < 2**32, "a whole number in [0, 2**32)", None),
            "class_balanced": (lambda v: isinstance(v, bool), "true or false", None),
        }
        for key, (ok, rule, only) in checks.items():
            if key not in step:
                continue
            if not ok(step[key]):
                raise PrunekitError(f"recipe step {i}: {key} {step[key]!r} must be {rule}")
            if only is not None and method != only:
                raise PrunekitError(f"recipe step {i}: {key} applies only to method {only}, not {method!r}")
        for key in ("bins", "seed"):
            if key in step:
                step[key] = int(step[key])
        out.append(step)
    if not out:
        raise PrunekitError("recipe has no steps")
    return out


def apply_recipe(
    scores: np.ndarray, steps: Sequence[Mapping[str, Any]], labels: np.ndarray | None = None, seed: int = 0
) -> Selection:
    """Run the steps in order, each choosing from what the previous step kept."""
    steps = validate_recipe(steps)
    pool = None
    for i, step in enumerate(steps):
        step = dict(step)
        method = step.pop("method", "hardest")
        keep = step.pop("keep")
        step_seed = int(step.pop("seed", seed + i))
        pool = select(scores, keep, method, labels=labels, pool=pool, seed=step_seed, **step)
    return Selection(pool, len(scores))


@dataclass
class Selection:
    """The kept examples of a dataset of ``n_total``: indices, mask, Subset and HF filter."""

    indices: np.ndarray
    n_total: int

    def __post_init__(self):
        indices = np.asarray(self.indices)
        if indices.ndim != 1:
            raise PrunekitError(f"selection indices must be a flat list, got shape {indices.shape}")
        if len(indices) and indices.dtype.kind not in "iu":
            raise PrunekitError(f"selection indices must be integers, got {indices.dtype} (e.g. {indices[0]!r})")
        if isinstance(self.n_total, (bool, np.bool_)) or not _is_whole(self.n_total) or self.n_total < 1:
            raise PrunekitError(f"selection n_total {self.n_total!r} must be a whole number >= 1")
        self.n_total = int(self.n_total)
        indices = np.sort(indices.astype(np.int64))
        if len(indices) and (indices[0] < 0 or indices[-1] >= self.n_total):
            bad = indices[0] if indices[0] < 0 else indices[-1]
            raise PrunekitError(f"selection index {int(bad)} is out of range [0, {self.n_total})")
        dup = indices[1:][indices[1:] == indices[:-1]]
        if len(dup):
            raise PrunekitError(f"selection index {int(dup[0])} appears more than once")
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def mask(self) -> np.ndarray:
        m = np.zeros(self.n_total, dtype=bool)
        m[self.indices] = True
        return m

    @property
    def fraction_removed(self) -> float:
        return 1 - len(self.indices) / self.n_total

    def subset(self, dataset) -> torch.utils.data.Subset:
        """A ``torch.utils.data.Subset`` of ``dataset`` (which must have ``n_total`` items)."""
        if len(dataset) != self.n_total:
            raise ValueError(f"dataset has {len(dataset)} examples, selection was made on {self.n_total}")
        return torch.utils.data.Subset(dataset, self.indices.tolist())

    def filter_fn(self):
        """A ``(example, index) -> bool`` predicate for ``datasets.Dataset.filter(..., with_indices=True)``."""
        mask = self.mask
        return lambda example, idx: bool(mask[idx])

    def hf_filter(self, dataset, **kwargs):
        """Filter a Hugging Face ``datasets.Dataset`` (duck-typed: anything with ``.filter``)."""
        if len(dataset) != self.n_total:
            raise ValueError(f"dataset has {len(dataset)} rows, selection was made on {self.n_total}")
        return dataset.filter(self.filter_fn(), with_indices=True, **kwargs)

    def save(self, path) -> None:
        """``.npz`` with ``indices``, ``mask`` and ``n_total``."""
        np.savez(path, indices=self.indices, mask=self.mask, n_total=np.int64(self.n_total))

    @classmethod
    def load(cls, path) -> Selection:
        """Read a file written by :meth:`save`; anything else (object arrays, foreign files) is a one-line error."""
        shown = str(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                if not hasattr(f, "files") or not {"indices", "n_total"} <= set(f.files):
                    raise ValueError("it has no 'indices' and 'n_total' arrays")
                indices, n_total = np.asarray(f["indices"]), np.asarray(f["n_total"])
                mask = np.asarray(f["mask"]) if "mask" in f.files else None
        except Exception as exc:  # noqa: BLE001 - not a zip, object arrays, truncated...: one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PrunekitError(f"selection {shown!r} is not a prunekit selection file ({first})") from None
        if n_total.shape != () or n_total.dtype.kind not in "iu":
            raise PrunekitError(f"selection {shown!r}: n_total must be one integer, got {n_total.dtype} {n_total.shape}")
        try:
            sel = cls(indices, int(n_total))
        except PrunekitError as exc:
            raise PrunekitError(f"selection {shown!r}: {exc}") from None
        if mask is not None and (mask.shape != (sel.n_total,) or mask.dtype != bool
                                 or not np.array_equal(np.flatnonzero(mask), sel.indices)):
            raise PrunekitError(f"selection {shown!r}: its mask does not match its indices")
        return sel
