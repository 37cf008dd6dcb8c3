"""``brown-continuation``: HellaSwag-style; given two sentences of a Brown document, pick the sentence
that follows them among 4.

The distractors are sentences of other documents of the same genre, each within a factor 1.5 of
the true sentence's length in words (so that length alone gives little away). Contexts and
targets are full sentences (capital start, final punctuation; headings are skipped); the true
sentence has 6 to 40 words. Genre ``a`` (press: reportage) by default, held out from calibration.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from prunekit.core.registry import TASKS, option
from prunekit.evaluate.tasks.base import Item, Task, pick_distinct, shuffled_choices
from prunekit.evaluate.tasks.brown import DEFAULT_GENRES, documents

TARGET_WORDS = (6, 40)


@TASKS.register("brown-continuation")
@dataclass
class BrownContinuation(Task):
    """Pick the true next sentence of a Brown passage among 4 (others: same genre, other documents; chance 25%)."""

    version = "1"
    genres: str = option(DEFAULT_GENRES, "Brown genres the passages come from (a = press: reportage, "
                         "held out from calibration)")
    context_sentences: int = option(2, "sentences before the one to pick", min=1, max=10)

    def build(self) -> list[Item]:
        docs = documents(self.genres)
        pool = [s for doc in docs for s in doc if s.proper(*TARGET_WORDS)]
        candidates = []
        k = self.context_sentences
        for doc in docs:
            for i in range(k, len(doc)):
                window = doc[i - k: i + 1]
                if all(s.proper() for s in window[:-1]) and window[-1].proper(*TARGET_WORDS):
                    candidates.append(window)
        rng = random.Random(self.seed)
        rng.shuffle(candidates)
        items = []
        for window in candidates[: self.size]:
            true = window[-1]

            def reject(s, true=true):
                return (s.document == true.document or s.text == true.text
                        or not 2 / 3 <= s.n_words / true.n_words <= 3 / 2)

            distractors = [s.text for s in pick_distinct(rng, pool, 3, reject)]
            choices, label = shuffled_choices(rng, true.text, distractors)
            items.append(Item(context=" ".join(s.text for s in window[:-1]), choices=choices, label=label,
                              source=f"brown {true.document} sentence {true.position}"))
        return items
