"""``brown-genre``: text classification; name the genre of a Brown passage among 4 one-word labels.

The four labels are one token each after a space, and far apart in the corpus: ``news`` (genre a,
press: reportage), ``religion`` (d), ``science`` (j, learned: the sciences, medicine, law, the
humanities) and ``fiction`` (k-p: general fiction, mystery, science fiction, adventure, romance).
The context is ``Passage: <text>\\nGenre:`` and the choices are the four labels, always in that
order (the label is the genre's position), so the task is a classifier read off the model's
next-token distribution: one forward pass per item scores all four (see
:func:`prunekit.evaluate.scorer.loglikelihoods`).

A passage is a run of consecutive full sentences of one document (headings end a run), from
``min_words`` to ``max_words`` words; a document gives passages that do not overlap. The documents
of each genre are split by file: every third file in name order (the 1st, 4th, 7th...) is held out
(``split: test``, the default), the others are for training (``split: train``), so a model
fine-tuned on the training split never saw a test passage's document. Each genre gives as many
items as the scarcest one (religion), so chance is 25% and the labels are balanced; items are
listed in a seeded random order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from prunekit.core.data_sources import brown_files, brown_paragraphs, parse_genres
from prunekit.core.errors import PrunekitError
from prunekit.core.registry import TASKS, option
from prunekit.evaluate.tasks.base import Item, Task
from prunekit.evaluate.tasks.brown import Sentence

LABELS = {"news": "a", "religion": "d", "science": "j", "fiction": "k-p"}  # label word -> Brown genres
SPLITS = ("test", "train")
HELD_OUT_EVERY = 3  # every third file of a genre, in name order, is held out


def split_files(genres: str, split: str) -> list:
    """The Brown files of ``genres`` in ``split``: every third file in name order is ``test``."""
    files = brown_files(parse_genres(genres))
    return [f for k, f in enumerate(files) if (k % HELD_OUT_EVERY == 0) == (split == "test")]


def passages(path, min_words: int, max_words: int) -> list[tuple[str, int]]:
    """Non-overlapping runs of consecutive full sentences of one Brown file, ``min_words`` to
    ``max_words`` words each: (text, index of the first sentence)."""
    sentences = [s for paragraph in brown_paragraphs(path) for s in paragraph]
    out, run, n = [], [], 0
    for i, text in enumerate(sentences):
        sentence = Sentence(text, path.name, i)
        if not sentence.proper() or sentence.n_words > max_words:  # a heading or an overlong sentence
            run, n = [], 0
            continue
        if n + sentence.n_words > max_words:  # the run would overflow: it is dropped, a new one starts
            run, n = [], 0
        run.append(sentence)
        n += sentence.n_words
        if n >= min_words:
            out.append((" ".join(s.text for s in run), run[0].position))
            run, n = [], 0
    return out


@TASKS.register("brown-genre")
@dataclass
class BrownGenre(Task):
    """Name the genre of a Brown passage: news, religion, science or fiction (chance 25%; train/test split by file)."""

    version = "1"
    split: str = option("test", "test: every third file of each genre (held out); train: the other files",
                        choices=SPLITS)
    min_words: int = option(40, "shortest passage in words", min=5, max=1000)
    max_words: int = option(80, "longest passage in words", min=10, max=1000)

    def build(self) -> list[Item]:
        if self.min_words > self.max_words:
            raise PrunekitError(f"min_words ({self.min_words}) is larger than max_words ({self.max_words})")
        labels = tuple(LABELS)
        per_genre = []
        for genres in LABELS.values():
            found = [(text, f"brown {path.name} sentence {first}")
                     for path in split_files(genres, self.split)
                     for text, first in passages(path, self.min_words, self.max_words)]
            per_genre.append(found)
        rng = random.Random(self.seed)
        count = min(self.size // len(labels), *(len(found) for found in per_genre))
        items = []
        for label, found in enumerate(per_genre):
            for text, source in rng.sample(found, count):
                items.append(Item(context=f"Passage: {text}\nGenre:", choices=labels, label=label, source=source))
        rng.shuffle(items)
        return items
