"""Selectors: turn a score vector (higher = harder) into the set of examples to keep.

Every selector is a config dataclass registered in :data:`prunekit.core.registry.SELECTORS`; its
options are checked by the registry. :meth:`Selector.choose` takes the candidate pool (dataset
indices), the scores of the whole dataset and an exact number to keep, and returns exactly that
many indices:

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

A data-selection recipe is a list of :class:`SelectionStep` (the ``selection`` kind of
:data:`~prunekit.core.registry.STEPS`), each narrowing the pool of the previous one, e.g.::

    steps:
      - {selector: easiest, sparsity: 0.1}                       # drop the 10% hardest
      - {selector: ccs, sparsity: 0.7, options: {bins: 50}, class_balanced: true}

``sparsity`` is the fraction of the *whole dataset* removed (``keep``, its alias, is the fraction
kept or a count of examples); ``method`` is an alias of ``selector``, and a selector's options may
also be written flat in the step (``{method: ccs, keep: 0.3, bins: 50}``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from prunekit.core.errors import PrunekitError, unknown_choice
from prunekit.core.recipe import Step, parse_step
from prunekit.core.registry import SELECTORS, STEPS, option

SEED_MAX = 2**32 - 1


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


class Selector:
    """Chooses which examples of a pool are kept."""

    name: ClassVar[str]

    def choose(self, pool: np.ndarray, scores: np.ndarray, k: int, rng: np.random.Generator,
               n_total: int) -> np.ndarray:
        """Exactly ``k`` distinct entries of ``pool``. ``n_total`` is the size that dataset-level
        fractions (``offset``, ``beta``) refer to: the dataset, or a class's share of it."""
        raise NotImplementedError


@SELECTORS.register("hardest")
@dataclass
class Hardest(Selector):
    """The highest scores: the hardest examples (Paul et al. 2021 keep these)."""

    def choose(self, pool, scores, k, rng, n_total):
        return _order(pool, scores, rng)[:k]


@SELECTORS.register("easiest")
@dataclass
class Easiest(Selector):
    """The lowest scores: the easiest examples."""

    def choose(self, pool, scores, k, rng, n_total):
        return _order(pool, scores, rng)[::-1][:k]


@SELECTORS.register("band")
@dataclass
class Band(Selector):
    """A middle band: skip the `offset` hardest fraction of the dataset, keep the next ones."""

    offset: float = option(0.0, "fraction of the dataset skipped from the hardest end", min=0, below=1)

    def choose(self, pool, scores, k, rng, n_total):
        skip = round(self.offset * (n_total or len(pool)))
        ranked = _order(pool, scores, rng)
        if skip + k > len(ranked):
            raise PrunekitError(f"band offset {self.offset} + keep {k} exceeds the {len(ranked)} candidates")
        return ranked[skip : skip + k]


@SELECTORS.register("ccs")
@dataclass
class CCS(Selector):
    """Coverage-centric coreset: cut the hardest `beta`, then sample score strata evenly (Zheng et al. 2023)."""

    beta: float = option(0.0, "hard cutoff: the hardest fraction of the dataset never kept (default 0; 'data "
                         "select --sparsity S' without --beta uses ccs_default_beta(S))", min=0, below=1)
    bins: int = option(50, "equal-width score strata", min=1)

    def choose(self, pool, scores, k, rng, n_total):
        """Zheng et al. (2023), Algorithm 1 (see the module docstring)."""
        n_cut = round(self.beta * (n_total or len(pool)))
        ranked = _order(pool, scores, rng)
        kept_pool = ranked[n_cut:]
        if k > len(kept_pool):
            raise PrunekitError(f"CCS: cannot keep {k} after cutting the {n_cut} hardest of {len(pool)} candidates")
        s = scores[kept_pool]
        lo, hi = float(s.min()), float(s.max())
        edges = np.linspace(lo, hi, self.bins + 1)
        which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, self.bins - 1)
        strata = [kept_pool[which == b] for b in range(self.bins)]
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


@SELECTORS.register("random")
@dataclass
class Random(Selector):
    """Uniform without replacement: the baseline."""

    def choose(self, pool, scores, k, rng, n_total):
        return rng.choice(pool, size=k, replace=False)


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
        raise PrunekitError(f"keep must be a number, got {keep!r}")
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
    selector: str = "hardest",
    *,
    labels: np.ndarray | None = None,
    class_balanced: bool = False,
    pool: np.ndarray | None = None,
    seed: int = 0,
    **options: Any,
) -> np.ndarray:
    """Indices (sorted) of exactly ``keep`` examples (a fraction of the dataset in (0, 1] or a count)
    chosen from ``pool`` by the registered ``selector`` with its checked ``options``."""
    chooser = SELECTORS.build(selector, options)
    scores = np.asarray(scores, dtype=np.float64)
    n_total = len(scores)
    pool = np.arange(n_total) if pool is None else np.asarray(pool, dtype=np.int64)
    k = _resolve_keep(keep, n_total)
    if k > len(pool):
        raise PrunekitError(f"cannot keep {k} examples from a pool of {len(pool)}")
    rng = np.random.default_rng(seed)
    if not class_balanced:
        return np.sort(chooser.choose(pool, scores, k, rng, n_total))
    if labels is None:
        raise PrunekitError("class_balanced selection needs labels")
    labels = np.asarray(labels)
    quotas = class_quotas(labels[pool], k)
    parts = []
    for c, q in quotas.items():
        members = pool[labels[pool] == c]
        if q == 0:
            continue
        share = len(members) / len(pool)  # scale dataset-level fractions (beta, offset) to the class
        parts.append(chooser.choose(members, scores, q, rng, round(n_total * share)))
    return np.sort(np.concatenate(parts))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and bool(np.isfinite(v))


def _is_whole(v: Any) -> bool:
    return _is_number(v) and float(v).is_integer()


# ---------------------------------------------------------------------------------- the recipe step
@STEPS.register("selection")
@dataclass
class SelectionStep(Step):
    """Keep a subset of the training examples, chosen by a selector on a data score."""

    key_aliases = {"method": "selector"}  # the key of data-selection recipes written before
    selector: str = option("hardest", "which examples are kept: a selector name")
    sparsity: float | None = option(None, "fraction of the whole dataset removed", min=0, below=1)
    keep: int | float | None = option(None, "alias of sparsity: the fraction kept (1 - sparsity), or a count of "
                                      "examples", above=0)
    options: dict = option(help="the selector's options, e.g. {bins: 50}", default_factory=dict)
    class_balanced: bool = option(False, "exact per-class quotas, proportional to each class's size in the pool")
    seed: int | None = option(None, "seed of tie-breaks and random draws (default: the run's seed + the step's "
                              "index)", min=0, max=SEED_MAX)

    def validate(self) -> None:
        self.selector = SELECTORS.canonical(self.selector)
        if (self.sparsity is None) == (self.keep is None):
            raise PrunekitError("selection step: give sparsity (the fraction removed) or its alias keep (the "
                                "fraction kept, or a count)" + (", not both" if self.keep is not None else ""))
        if self.keep is not None and self.keep > 1:
            if not float(self.keep).is_integer():
                raise PrunekitError(f"keep {self.keep!r} is neither a fraction in (0, 1] nor a whole count >= 1")
            self.keep = int(self.keep)
        self.options = SELECTORS.check(self.selector, self.options)

    def kept(self, n_total: int) -> int:
        """The number of examples this step keeps out of a dataset of ``n_total``."""
        keep = self.keep if self.keep is not None else round(1.0 - self.sparsity, 12)
        return _resolve_keep(keep, n_total)

    def to_dict(self) -> dict:
        amount = {"sparsity": self.sparsity} if self.keep is None else {"keep": self.keep}
        return {"kind": self.name, "selector": self.selector, **amount, "options": dict(self.options),
                "class_balanced": self.class_balanced, "seed": self.seed}


STEP_KEYS = (*(f.name for f in dataclasses.fields(SelectionStep)), *SelectionStep.key_aliases)


def parse_selection_step(data: Any, where: str = "step") -> SelectionStep:
    """A :class:`SelectionStep` from a mapping; ``kind`` defaults to ``selection`` and a selector's options
    may be written flat (``{method: ccs, keep: 0.3, bins: 50}``)."""
    if isinstance(data, SelectionStep):
        return data
    if not isinstance(data, Mapping):
        raise PrunekitError(f"{where} must be a mapping such as {{selector: ccs, sparsity: 0.7}}, "
                            f"got {type(data).__name__} {data!r:.60}")
    data = dict(data)
    kind = STEPS.canonical(data.pop("kind", "selection"))
    if kind != "selection":
        raise PrunekitError(f"{where} is a {kind!r} step; data selection runs 'selection' steps only")
    selector = data.get("selector") or data.get("method") or "hardest"
    names = [o.name for o in SELECTORS.options(selector)]
    options = data.get("options", {})
    if isinstance(options, Mapping):
        options = dict(options)
        for key in [k for k in data if k not in STEP_KEYS]:
            if key not in names:
                raise unknown_choice("key", key, [*STEP_KEYS, *names], where=where)
            if key in options:
                raise PrunekitError(f"{where}: {key!r} is given both flat and under options")
            options[key] = data.pop(key)
        if options:
            data["options"] = options
    return parse_step({"kind": "selection", **data}, where)


def selection_steps(steps: Any) -> list[SelectionStep]:
    """The steps of a data-selection recipe: a list of steps (mappings or :class:`SelectionStep`), or a
    mapping holding one under ``steps``."""
    if isinstance(steps, (Mapping, SelectionStep)):
        steps = steps.get("steps", [steps]) if isinstance(steps, Mapping) else [steps]
    if not isinstance(steps, (list, tuple)):
        raise PrunekitError(f"recipe steps must be a list of mappings, got {type(steps).__name__} {steps!r:.60}")
    if not steps:
        raise PrunekitError("recipe has no steps")
    return [parse_selection_step(step, f"steps[{i}]") for i, step in enumerate(steps)]


def apply_recipe(scores: np.ndarray, steps: Any, labels: np.ndarray | None = None, seed: int = 0) -> Selection:
    """Run the selection steps in order, each choosing from what the previous step kept.

    A step without a seed uses ``seed + its index``."""
    pool = None
    for i, step in enumerate(selection_steps(steps)):
        step_seed = seed + i if step.seed is None else step.seed
        pool = select(scores, step.kept(len(scores)), step.selector, labels=labels, pool=pool, seed=step_seed,
                      class_balanced=step.class_balanced, **step.options)
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

    def subset(self, dataset):
        """A ``torch.utils.data.Subset`` of ``dataset`` (which must have ``n_total`` items)."""
        import torch

        if len(dataset) != self.n_total:
            raise PrunekitError(f"dataset has {len(dataset)} examples, selection was made on {self.n_total}")
        return torch.utils.data.Subset(dataset, self.indices.tolist())

    def filter_fn(self):
        """A ``(example, index) -> bool`` predicate for ``datasets.Dataset.filter(..., with_indices=True)``."""
        mask = self.mask
        return lambda example, idx: bool(mask[idx])

    def hf_filter(self, dataset, **kwargs):
        """Filter a Hugging Face ``datasets.Dataset`` (duck-typed: anything with ``.filter``)."""
        if len(dataset) != self.n_total:
            raise PrunekitError(f"dataset has {len(dataset)} rows, selection was made on {self.n_total}")
        return dataset.filter(self.filter_fn(), with_indices=True, **kwargs)

    def save(self, path, overwrite: bool = False) -> Path:
        """``.npz`` with ``indices``, ``mask`` and ``n_total``, through the one writer: a new file, or
        with ``overwrite`` one that is a selection already (:func:`prunekit.core.io.atomic_file`)."""
        from prunekit.core.io import atomic_file

        with atomic_file(path, not_a_selection, overwrite) as tmp:
            self.write(tmp)
        return Path(path).expanduser().resolve()

    def write(self, path) -> None:
        """The ``.npz`` at ``path``, a staging path of the writer (use :meth:`save` for an output)."""
        with Path(path).open("wb") as f:
            np.savez(f, indices=self.indices, mask=self.mask, n_total=np.int64(self.n_total))

    @classmethod
    def load(cls, path) -> Selection:
        """Read a file written by :meth:`save`; anything else (object arrays, foreign files) is a one-line error."""
        shown = str(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                if not hasattr(f, "files") or not {"indices", "n_total"} <= set(f.files):
                    raise PrunekitError("it has no 'indices' and 'n_total' arrays")
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


def not_a_selection(path: Path) -> str | None:
    """Why the existing ``path`` is not a file ``select`` wrote: the ``.npz`` selection or its ``.json``
    summary (None when it is)."""
    if path.suffix == ".npz":
        try:
            Selection.load(path)
        except PrunekitError:
            return "is not a prunekit selection"
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and {"kept", "steps", "n_total"} <= set(data):
        return None
    return "is not a prunekit selection summary"


# ---------------------------------------------------------------------------------- files of a selection run
RECIPE_EXTRAS = ("score", "aggregate")  # keys of the data-selection recipes written before the one format


def read_selection_recipe(path: str | Path):
    """``(extras, recipe)`` of a recipe file of selection steps: the one recipe format
    (:class:`~prunekit.core.recipe.Recipe`, ``kind: selection`` steps), also read from the older files
    whose steps have no ``kind`` or write a selector's options flat, with ``score`` / ``aggregate`` at
    the top (returned as ``extras``: the defaults of ``--score`` / ``--aggregate``)."""
    from prunekit.core.recipe import PROVENANCE_KEYS, CalibrationConfig, Recipe, check_keys, read_recipe_file

    data = read_recipe_file(path)  # a non-empty mapping, or a one-line error
    if "steps" not in data:
        raise PrunekitError(f"recipe file {str(path)!r} must hold the selection steps under 'steps'")
    check_keys({k: v for k, v in data.items() if k not in PROVENANCE_KEYS}, ("steps", "calibration", *RECIPE_EXTRAS),
               f"recipe file {str(path)!r}")
    for key in RECIPE_EXTRAS:
        if key in data and not isinstance(data[key], str):
            raise PrunekitError(f"recipe file {str(path)!r}: {key} {data[key]!r} must be a string")
    calibration = data.get("calibration") or {}
    if not isinstance(calibration, dict):
        raise PrunekitError(f"recipe file {str(path)!r}: calibration must be a mapping, got {calibration!r:.60}")
    return {k: data[k] for k in RECIPE_EXTRAS if k in data}, Recipe(selection_steps(data["steps"]),
                                                                   CalibrationConfig(**calibration))


def check_selection_out(path: str | Path, overwrite: bool = False) -> Path:
    """``--out`` of a selection: a ``.npz`` (and its ``.json`` summary beside it), new, or files a selection
    run wrote with ``overwrite``; the rules of :func:`prunekit.core.io.check_output`."""
    from prunekit.core.io import check_output

    if Path(path).suffix != ".npz":
        raise PrunekitError(f"--out {str(path)!r} must end in .npz (the selection; a .json summary is written beside "
                            "it)")
    out = check_output(path, overwrite, owned=not_a_selection)
    check_output(out.with_suffix(".json"), overwrite, owned=not_a_selection, probe=False)
    return out


def save_selection(path: str | Path, selection: Selection, summary: dict, overwrite: bool = False) -> Path:
    """The selection ``.npz`` and its ``.json`` summary, both or neither (the one writer)."""
    from prunekit.core.io import atomic_file, write_json

    out = Path(path).expanduser().resolve()
    summary_name = out.with_suffix(".json").name
    with atomic_file(out, not_a_selection, overwrite, also=[summary_name]) as tmp:
        selection.write(tmp)
        write_json(tmp.with_name(summary_name), summary)
    return out
