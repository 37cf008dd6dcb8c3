"""``brown-lastword``: LAMBADA-style; predict the last word of a Brown passage.

A passage is a run of consecutive full sentences of one document, at most ``max_words`` words,
that ends with a sentence whose last word (3+ letters) already appears earlier in the passage
(case aside): the context holds what is needed to guess it. The context is the passage up to that
word; the answer counts when greedy decoding gives exactly `` word`` (every token the most likely
one), lm-eval's ``acc`` of a ``loglikelihood`` task. Chance is about 0. Genre ``a`` (press:
reportage) by default, held out from calibration.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from prunekit.core.registry import TASKS, option
from prunekit.evaluate.tasks.base import LAST_WORD, Item, Task, words
from prunekit.evaluate.tasks.brown import DEFAULT_GENRES, documents

LAST = re.compile(r"""\s([A-Za-z]{3,})[.!?]["')]*$""")


@TASKS.register("brown-lastword")
@dataclass
class BrownLastWord(Task):
    """Predict the last word of a Brown passage that appeared earlier in it (greedy exact match; chance ~0)."""

    kind = LAST_WORD
    version = "1"
    chance = 0.0
    genres: str = option(DEFAULT_GENRES, "Brown genres the passages come from (a = press: reportage, "
                         "held out from calibration)")
    max_words: int = option(120, "longest passage in words", min=20, max=1000)
    min_words: int = option(40, "shortest passage in words", min=5, max=1000)

    def build(self) -> list[Item]:
        candidates = []
        for doc in documents(self.genres):
            for i, last in enumerate(doc):
                match = LAST.search(last.text)
                if not match or not last.proper():
                    continue
                start, n = i, last.n_words  # grow the passage backwards, sentence by sentence
                while start > 0 and doc[start - 1].proper() and n + doc[start - 1].n_words <= self.max_words:
                    start -= 1
                    n += doc[start].n_words
                if n < self.min_words:
                    continue
                passage = " ".join(s.text for s in doc[start: i + 1])
                cut = len(passage) - len(last.text) + match.start(1)
                context, target = passage[:cut].rstrip(), match.group(1)
                if target.lower() in words(context):
                    candidates.append(Item(context=context, target=target,
                                           source=f"brown {last.document} sentence {last.position}"))
        rng = random.Random(self.seed)
        rng.shuffle(candidates)
        return candidates[: self.size]
