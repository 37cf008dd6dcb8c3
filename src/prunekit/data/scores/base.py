"""What every data score shares: the contract, the direction convention and what a score may read.

A score is a small config dataclass registered in :data:`prunekit.core.registry.SCORES`::

    @SCORES.register("el2n")
    @dataclass
    class EL2N(Score):
        \"\"\"Error L2 norm ||softmax(f(x)) - onehot(y)|| early in training (Paul et al. 2021).\"\"\"

        flags = "mislabelled"
        needs = frozenset({"model", "labels"})

        def compute(self, ctx):
            return el2n_from_logits(ctx.logits, ctx.y)

Its ``direction`` says how to read the values; every built-in score is stored **higher = harder**
(more informative, more likely mislabeled), with a note where the paper's sign was flipped. Its
``flags`` (a key of :data:`FLAGS`) says which examples its highest values pick out. Its ``needs`` (a
subset of :data:`NEEDS`) says what it is computed from; the pipeline derives from it when the score
is taken (:func:`stage`) and fills a :class:`ScoreContext` with exactly that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.data.scores._common import HIGHER_IS_HARDER, batched_logits, batched_logits_and_embeddings

NEEDS = {
    "labels": "the label of each example (a flipped label makes the example harder)",
    "model": "a classifier trained up to a scoring epoch (scored at each --score-epochs, early in training)",
    "dynamics": "the per-epoch correctness and margin of each example over the whole training run",
    "checkpoints": "two or more snapshots of the training run (the scoring epochs and the end)",
    "embeddings": "penultimate features of the classifier at the end of training",
    "language model": "a causal language model and its tokenizer (text documents)",
}
FLAGS = {
    "mislabelled": "examples whose label the model disagrees with: a flipped label ranks among the highest",
    "ambiguous": "examples the model is unsure about, whatever their label (near the decision boundary)",
    "atypical": "examples far from the rest (rare, outliers; exact duplicates score lowest)",
    "unstable": "examples whose input gradients change most during training (memorized or near the boundary; "
                "on a small model a flipped label inside another class is NOT among them)",
    "nothing": "nothing: uniform noise, the baseline every score must beat",
}
STAGES = {
    "untrained": "computed without training (e.g. random)",
    "epoch": "at every scoring epoch of every seed, from the model trained so far",
    "end": "once per seed, at the end of its training run",
    "text": "once, from a causal language model over the documents",
}


def stage(needs: frozenset[str]) -> str:
    """When a score with these ``needs`` is taken (a key of :data:`STAGES`)."""
    if "language model" in needs:
        return "text"
    if "model" in needs:
        return "epoch"
    if needs & {"dynamics", "checkpoints", "embeddings"}:
        return "end"
    return "untrained"


@dataclass
class ScoreContext:
    """Everything a score may read; the pipeline fills what the requested scores need.

    Derived values (``logits``, ``embeddings``, a text score's per-document losses) are computed on
    first use and shared by every score of the same context, so the scores of one checkpoint cost
    one forward pass."""

    x: torch.Tensor | None = None  # classification examples, (N, ...)
    y: torch.Tensor | None = None  # their labels, (N,)
    seed: int = 0  # the seed of the run being scored
    model: nn.Module | None = None  # the classifier (or causal LM for text) at this point of training
    dynamics: Any = None  # a prunekit.data.dynamics.TrainingDynamics of the whole run
    checkpoints: Sequence[nn.Module] = ()  # snapshots of the run, oldest first
    texts: Sequence[str] | None = None  # text documents
    tokenizer: Any = None
    max_tokens: int = 256  # tokens of each document read by a text score
    progress: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        """Number of examples (or documents)."""
        if self.texts is not None:
            return len(self.texts)
        if self.x is None:
            raise PrunekitError("a score context needs examples (x) or documents (texts)")
        return len(self.x)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for, the same value afterwards."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _forward(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if hasattr(self.model, "embed"):
            return batched_logits_and_embeddings(self.model, self.x)
        return batched_logits(self.model, self.x), None

    @property
    def logits(self) -> torch.Tensor:
        """The model's logits on ``x`` (eval mode, batched), (N, classes)."""
        return self.cached("forward", self._forward)[0]

    @property
    def embeddings(self) -> torch.Tensor:
        """The model's penultimate features (``model.embed``), (N, d)."""
        h = self.cached("forward", self._forward)[1]
        if h is None:
            raise PrunekitError(f"this score needs penultimate features, but {type(self.model).__name__} has no "
                                "embed(x) method")
        return h

    def missing(self, needs: frozenset[str]) -> list[str]:
        """The needs this context cannot provide."""
        have = {
            "labels": self.y is not None,
            "model": self.model is not None and self.x is not None,
            "dynamics": self.dynamics is not None,
            "checkpoints": len(self.checkpoints) >= 2,
            "embeddings": self.model is not None and self.x is not None,
            "language model": self.model is not None and self.tokenizer is not None and self.texts is not None,
        }
        return sorted(need for need in needs if not have[need])


class Score:
    """A per-example data-pruning score.

    ``direction`` is how its values read (``"higher=harder"`` plus a note where the paper's sign was
    flipped); ``flags`` which examples its highest values pick out (a key of :data:`FLAGS`); ``needs``
    what it is computed from (keys of :data:`NEEDS`). :meth:`compute` returns one float per example;
    calling the score checks the context first and the result after."""

    name: ClassVar[str]
    direction: ClassVar[str] = HIGHER_IS_HARDER
    flags: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(cls.needs) - set(NEEDS))
        if unknown:
            raise PrunekitError(f"score {cls.__name__} needs {unknown}, which is not one of {', '.join(NEEDS)}")
        if getattr(cls, "flags", None) not in FLAGS:
            raise PrunekitError(f"score {cls.__name__}: flags {getattr(cls, 'flags', None)!r} is not one of "
                                f"{', '.join(FLAGS)}")
        if not cls.direction.startswith(HIGHER_IS_HARDER):
            raise PrunekitError(f"score {cls.__name__}: direction {cls.direction!r} must start with "
                                f"{HIGHER_IS_HARDER!r} (store the score with that orientation)")

    @classmethod
    def stage(cls) -> str:
        return stage(cls.needs)

    def compute(self, ctx: ScoreContext) -> np.ndarray:
        """One value per example of ``ctx``, higher = harder."""
        raise NotImplementedError

    def __call__(self, ctx: ScoreContext) -> np.ndarray:
        missing = ctx.missing(self.needs)
        if missing:
            raise PrunekitError(f"data score {self.name!r} needs {', '.join(missing)}: "
                                + "; ".join(NEEDS[m] for m in missing))
        values = np.asarray(self.compute(ctx), dtype=np.float64)
        if values.shape != (ctx.n,):
            raise PrunekitError(f"data score {self.name!r} returned shape {values.shape}, expected ({ctx.n},)")
        return values
