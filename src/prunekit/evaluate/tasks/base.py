"""What every zero-shot task is: a config dataclass (a ``TASKS`` entry) that builds a list of items.

An item is one question. A multiple-choice item holds a ``context`` and ``choices``, of which
``label`` is right; the model's answer is the choice of highest log-likelihood after the context
(``acc``), or of highest log-likelihood per character of the choice (``acc_norm``), as
lm-eval-harness scores ``multiple_choice`` tasks. A last-word item holds a ``context`` and the
``target`` word; it is right when greedy decoding after the context gives exactly the target
(lm-eval's ``loglikelihood`` tasks such as LAMBADA). Each scored continuation is the choice or the
target after one space (lm-eval's ``target_delimiter``).

Items are built from real text with a seeded generator and listed in a seeded random order, so
``limit`` items are the first ``limit`` (a random sample) and the same seed always gives the same
items, byte for byte: :meth:`Task.digest` hashes them, and the tests pin the digest of each task's
``version``. A change to how items are built must bump the version.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field

from prunekit.core.data_sources import check_count
from prunekit.core.registry import option

DELIMITER = " "  # between a context and its scored continuation, as lm-eval's target_delimiter
MULTIPLE_CHOICE = "multiple_choice"
LAST_WORD = "last_word"


@dataclass(frozen=True)
class Item:
    """One question: a context, and either choices with the right one's index, or a target word."""

    context: str
    choices: tuple[str, ...] = ()
    label: int = -1
    target: str = ""
    source: str = ""  # where the item came from (a WordNet synset, a Brown file and sentence)

    def continuations(self) -> list[str]:
        """The texts scored after the context: each choice, or the target, after the delimiter."""
        return [DELIMITER + c for c in (self.choices or (self.target,))]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["choices"] = list(self.choices)
        return data


@dataclass
class Task:
    """Base of every task: the seed and the number of items; subclasses build the items."""

    kind = MULTIPLE_CHOICE
    version = "0"
    chance = 0.25  # accuracy of guessing
    seed: int = option(0, "seed of the item sampler (same seed, same items)", min=0)
    size: int = option(2000, "items built (the first --limit of them are scored)", min=1)
    _items: list[Item] | None = field(default=None, init=False, repr=False, compare=False)

    def build(self) -> list[Item]:  # pragma: no cover - every task overrides it
        raise NotImplementedError

    def items(self, limit: int | None = None) -> list[Item]:
        """The task's items in their seeded order; the first ``limit`` (all when None)."""
        if limit is not None:
            check_count(limit, "limit")
        if self._items is None:
            self._items = self.build()
        return self._items[:limit]

    def digest(self, limit: int | None = None) -> str:
        """sha256 of the items as canonical JSON lines (what the tests pin for each version)."""
        h = hashlib.sha256()
        for item in self.items(limit):
            h.update(json.dumps(item.to_dict(), sort_keys=True, ensure_ascii=False).encode() + b"\n")
        return h.hexdigest()

    def describe(self) -> str:
        return f"{self.name} v{self.version} (seed {self.seed})"


# ------------------------------------------------------------------ helpers shared by the tasks

WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters, inner apostrophes and hyphens)."""
    return [w.lower() for w in WORD.findall(text)]


def pick_distinct(rng, pool: list, count: int, reject) -> list:
    """``count`` distinct members of ``pool`` drawn with ``rng`` for which ``reject(x)`` is false."""
    out: list = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 1000 * count:
            raise RuntimeError("could not draw enough distractors")  # the pools hold thousands
        x = pool[rng.randrange(len(pool))]
        if x not in out and not reject(x):
            out.append(x)
    return out


def shuffled_choices(rng, answer: str, distractors: list[str]) -> tuple[tuple[str, ...], int]:
    """The answer placed at a random position among the distractors: (choices, label)."""
    label = rng.randrange(len(distractors) + 1)
    choices = list(distractors)
    choices.insert(label, answer)
    return tuple(choices), label


def stderr_of_mean(values: list[float]) -> float:
    """Standard error of the mean, sample standard deviation / sqrt(n) (lm-eval's ``mean_stderr``)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
