"""The vocabulary step of a recipe (``kind: vocab``)::

    steps:
      - kind: vocab
        text: brown:b-r        # the corpus whose tokens are kept (any text source); null: none
        top: 0                 # also keep the tokenizer's N most frequent tokens
        keep_file: null        # also keep the token ids listed in this file
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunekit.core.errors import PrunekitError
from prunekit.core.recipe import Step
from prunekit.core.registry import STEPS, option


@STEPS.register("vocab")
@dataclass
class VocabStep(Step):
    """Keep the token ids a corpus needs; drop the other embedding/output rows and rewrite the tokenizer."""

    text: str | None = option("brown", "text source whose tokens are kept: brown | brown:<genres> | a text file; "
                              "null keeps only top, keep_file and keep_ids")
    top: int = option(0, "also keep the tokenizer's N most frequent tokens (the first N merges of a BPE, the N "
                      "most likely pieces of a Unigram)", min=0)
    keep_file: str | None = option(None, "also keep the token ids listed in this file (integers; # comments)")
    keep_ids: list[int] = option(default_factory=list, help="also keep these token ids")

    def validate(self) -> None:
        from prunekit.core.data_sources import check_source

        if self.text is not None:
            if not self.text:
                raise PrunekitError("text of the vocab step is empty; give brown, brown:<genres> or a text file")
            check_source(self.text)
        if self.keep_file is not None and not Path(self.keep_file).expanduser().is_file():
            raise PrunekitError(f"keep file {self.keep_file!r} does not exist")
        if self.text is None and not self.top and self.keep_file is None and not self.keep_ids:
            raise PrunekitError("the vocab step keeps nothing: give a text, top, keep_file or keep_ids")
        bad = [i for i in self.keep_ids if i < 0]
        if bad:
            raise PrunekitError(f"keep_ids of the vocab step must be token ids (>= 0), got {bad[0]}")


    def run(self, session):
        """Shrink the session's model and tokenizer; the next step calibrates on the new token ids."""
        tokenizer, result = apply_vocab_step(session.model, session.tokenizer, self)
        session.tokenizer = tokenizer
        session.forget_windows()
        return result


def step_keep_set(tokenizer, step: VocabStep, model_vocab: int | None = None):
    """The :class:`~prunekit.vocab.prune.KeepSet` of a vocab step (needs the tokenizer, no weights)."""
    from prunekit.vocab.prune import keep_set, read_keep_file, tokenizer_spec

    size = tokenizer_spec(tokenizer).size
    if model_vocab is not None:
        size = min(size, model_vocab)  # an id the embedding has no row for cannot be kept
    ids = list(step.keep_ids)
    bad = [i for i in ids if i >= size]
    if bad:
        raise PrunekitError(f"keep_ids of the vocab step: token id {bad[0]} is not in the vocabulary "
                            f"(ids 0..{size - 1})")
    if step.keep_file is not None:
        ids += read_keep_file(step.keep_file, size)
    return keep_set(tokenizer, step.text, step.top, ids, model_vocab=model_vocab)


def apply_vocab_step(model, tokenizer, step: VocabStep):
    """Run one vocab step on ``model`` (in place): returns ``(new tokenizer, VocabResult)``."""
    from prunekit.vocab.prune import prune_vocab

    keep = step_keep_set(tokenizer, step, model.get_input_embeddings().weight.shape[0])
    return prune_vocab(model, tokenizer, keep)
