"""``wordnet-gloss``: given a WordNet 3.0 definition, pick the word it defines among 4.

Built from Debian's ``wordnet-base`` (``/usr/share/wordnet/data.*`` and ``index.*``). A question
is a word's most frequent sense (the first synset its index entry lists) when the word is one
lower-case word of 3+ letters that occurs in WordNet's sense-tagged corpus (``tagsense_cnt`` > 0,
a familiarity filter) and does not appear in its own definition. The 3 distractors are such words
of the same part of speech that share no sense with the answer and do not appear in the
definition either; the answer's position is drawn at random. The prompt reads::

    Definition: a domesticated carnivorous mammal that typically has a long snout, ...
    Word: dog
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prunekit.core.errors import PrunekitError
from prunekit.core.registry import TASKS, option
from prunekit.evaluate.tasks.base import Item, Task, pick_distinct, shuffled_choices, words

WORDNET_DIR = Path("/usr/share/wordnet")
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
LEMMA = re.compile(r"[a-z]{3,}")


def wordnet_dir() -> Path:
    folder = WORDNET_DIR
    if not (folder / "data.noun").is_file():
        raise PrunekitError(f"WordNet 3.0 is not installed ({folder}/data.noun is missing); install it with: "
                            "apt-get install wordnet-base (setup.sh does)")
    return folder


def definition_of(gloss: str) -> str:
    """The definition part of a WordNet gloss: before the quoted examples, without a leading
    usage note in parentheses."""
    text = gloss.split('; "')[0].strip().rstrip(";").strip()
    return re.sub(r"^\([^)]*\)\s*", "", text)


@lru_cache(maxsize=4)
def read_pos(folder: str, pos: str) -> tuple[dict[int, tuple[tuple[str, ...], str]], dict[str, tuple[int, list[int]]]]:
    """(synsets: offset -> (lemmas, definition), index: lemma -> (tagsense_cnt, offsets by frequency))."""
    root = Path(folder)
    synsets = {}
    for line in (root / f"data.{POS_FILES[pos]}").read_text(encoding="utf-8").splitlines():
        if line.startswith("  ") or "|" not in line:  # the licence header
            continue
        head, gloss = line.split("|", 1)
        fields = head.split()
        count = int(fields[3], 16)
        lemmas = tuple(re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).lower() for i in range(count))
        synsets[int(fields[0])] = (lemmas, definition_of(gloss))
    index = {}
    for line in (root / f"index.{POS_FILES[pos]}").read_text(encoding="utf-8").splitlines():
        if line.startswith("  "):
            continue
        fields = line.split()
        synset_cnt, pointers = int(fields[2]), int(fields[3])
        tagged = int(fields[5 + pointers])
        index[fields[0]] = (tagged, [int(x) for x in fields[6 + pointers: 6 + pointers + synset_cnt]])
    return synsets, index


def _mentions(definition_words: set[str], word: str) -> bool:
    """Whether the definition holds ``word`` or a word sharing its first 5 letters (dogs, doggy)."""
    stem = word[:5]
    return any(w == word or (len(stem) >= 4 and w.startswith(stem)) for w in definition_words)


@TASKS.register("wordnet-gloss")
@dataclass
class WordNetGloss(Task):
    """Pick the word a WordNet 3.0 definition defines among 4 of the same part of speech (chance 25%)."""

    version = "1"
    size: int = option(3000, "items built (the first --limit of them are scored)", min=1)

    def build(self) -> list[Item]:
        folder = str(wordnet_dir())
        candidates = []  # (pos, lemma, offset, definition)
        pools: dict[str, list[str]] = {}
        senses: dict[tuple[str, str], set[int]] = {}
        for pos in POS_FILES:
            synsets, index = read_pos(folder, pos)
            pool = []
            for lemma, (tagged, offsets) in index.items():
                senses[pos, lemma] = set(offsets)
                if not LEMMA.fullmatch(lemma) or tagged < 1:
                    continue
                pool.append(lemma)
                definition = synsets[offsets[0]][1]
                if len(definition.split()) >= 3 and not _mentions(set(words(definition)), lemma):
                    candidates.append((pos, lemma, offsets[0], definition))
            pools[pos] = sorted(pool)
        rng = random.Random(self.seed)
        rng.shuffle(candidates)
        items = []
        for pos, lemma, offset, definition in candidates[: self.size]:
            mentioned = set(words(definition))
            distractors = pick_distinct(rng, pools[pos], 3, lambda w: w == lemma or _mentions(mentioned, w)
                                        or senses[pos, w] & senses[pos, lemma])
            choices, label = shuffled_choices(rng, lemma, distractors)
            items.append(Item(context=f"Definition: {definition}\nWord:", choices=choices, label=label,
                              source=f"wordnet 3.0 {POS_FILES[pos]} {offset:08d}"))
        return items
