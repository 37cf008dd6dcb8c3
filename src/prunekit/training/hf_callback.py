"""Pruning inside a Hugging Face ``transformers.Trainer``.

    pruner = Pruner(model, CubicSparsity(0.0, 0.8, start=100, end=1000, frequency=20))
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[PruningCallback(pruner)])

The Trainer fires ``on_step_end`` after ``optimizer.step()``, so the callback calls
``pruner.step(state.global_step - 1)`` there (the index of the optimizer step just taken).
transformers is imported only when this module is.
"""

from __future__ import annotations

from transformers import TrainerCallback

from prunekit.training.pruner import Pruner


class PruningCallback(TrainerCallback):
    """Drives a :class:`~prunekit.training.pruner.Pruner` from the Trainer's step counter."""

    def __init__(self, pruner: Pruner):
        self.pruner = pruner

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:
            self.pruner.attach(optimizer)
        self.pruner.step(state.global_step)
        return control

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:
            self.pruner.attach(optimizer)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self.pruner.step(state.global_step - 1)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.pruner.apply_masks()
        return control
