"""Record training dynamics per example, for forgetting events and AUM.

Both papers read the statistics off the mini-batch forward pass that training already does
(Toneva et al. 2019, Sec. 2; Pleiss et al. 2020, Sec. 3), so recording costs no extra pass:
:class:`TrainingDynamics` is a callback of the training loop (:func:`prunekit.core.train.train`):
it opens a row at each epoch start and records each step's batch (dataset indices, logits, labels).
One row per epoch; an example presented twice in an epoch keeps its last presentation. Its state is
saved in the loop's checkpoints under ``dynamics``.
"""

from __future__ import annotations

import numpy as np
import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.train import Batch, Callback, TrainState
from prunekit.data.scores.aum import aum_scores, margins_from_logits
from prunekit.data.scores.forgetting import forgetting_scores


class TrainingDynamics(Callback):
    """Per-epoch correctness and margin of every training example (NaN = not presented)."""

    key = "dynamics"

    def __init__(self, n_examples: int):
        self.n = int(n_examples)
        self.correct: list[np.ndarray] = []
        self.margin: list[np.ndarray] = []

    def start_epoch(self) -> None:
        self.correct.append(np.full(self.n, np.nan, dtype=np.float32))
        self.margin.append(np.full(self.n, np.nan, dtype=np.float32))

    def update(self, indices: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if not self.correct:
            self.start_epoch()
        idx = indices.cpu().numpy()
        logits = logits.detach().float().cpu()
        labels = labels.cpu()
        self.correct[-1][idx] = (logits.argmax(dim=1) == labels).numpy()
        self.margin[-1][idx] = margins_from_logits(logits, labels)

    def on_epoch_start(self, state: TrainState) -> None:
        self.start_epoch()

    def after_step(self, state: TrainState, batch: Batch) -> None:
        if batch.logits is None:
            raise PrunekitError("training dynamics need the batch logits: a loss callback must set batch.logits")
        self.update(batch.index, batch.logits, batch.y)

    def forgetting(self) -> np.ndarray:
        return forgetting_scores(np.stack(self.correct))

    def aum(self) -> np.ndarray:
        return aum_scores(np.stack(self.margin))

    def state_dict(self) -> dict:
        return {"n": self.n, "correct": [c.copy() for c in self.correct], "margin": [m.copy() for m in self.margin]}

    @classmethod
    def from_state_dict(cls, state: dict) -> TrainingDynamics:
        obj = cls(state["n"])
        obj.correct = [np.asarray(c) for c in state["correct"]]
        obj.margin = [np.asarray(m) for m in state["margin"]]
        return obj

    def load_state_dict(self, state: dict) -> None:
        """Continue the records of a checkpoint (same number of examples)."""
        restored = TrainingDynamics.from_state_dict(state)
        if restored.n != self.n or len(restored.correct) != len(restored.margin):
            raise PrunekitError(f"dynamics of {restored.n} examples, expected {self.n}")
        self.correct, self.margin = restored.correct, restored.margin
