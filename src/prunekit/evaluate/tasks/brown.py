"""Brown-corpus documents as sentences, for the Brown tasks (read by the one Brown reader,
:func:`prunekit.core.data_sources.brown_paragraphs`).

The tasks use genre ``a`` (press: reportage) by default: prunekit's calibration default is genres
b-r, so the tasks, like the perplexity protocol, are held out from calibration."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from prunekit.core.data_sources import brown_files, brown_paragraphs, parse_genres

DEFAULT_GENRES = "a"
SENTENCE_END = re.compile(r"""[.!?]["')]*$""")
SENTENCE_START = re.compile(r"""^["'(]?\s?[A-Z0-9]""")


@dataclass(frozen=True)
class Sentence:
    text: str
    document: str  # Brown file name, e.g. ca01
    position: int  # index of the sentence in its document

    @property
    def n_words(self) -> int:
        return len(self.text.split())

    def proper(self, low: int = 4, high: int = 60) -> bool:
        """A full sentence (capital start, final punctuation) of ``low`` to ``high`` words, not a heading."""
        return (low <= self.n_words <= high and bool(SENTENCE_START.match(self.text))
                and bool(SENTENCE_END.search(self.text)))


@lru_cache(maxsize=8)
def documents(genres: str) -> tuple[tuple[Sentence, ...], ...]:
    """Every Brown document of ``genres`` (a spec such as ``a`` or ``b-h``) as its sentences, in order."""
    out = []
    for path in brown_files(parse_genres(genres)):
        lines = [s for paragraph in brown_paragraphs(path) for s in paragraph]
        out.append(tuple(Sentence(text, path.name, i) for i, text in enumerate(lines)))
    return tuple(out)
