"""The :class:`Session` every recipe step runs in, and the :class:`ModelSource` it reads once.

The session holds what the steps of one :func:`prunekit.apply` share: the model (in memory, or the
skeleton of a checkpoint streamed block by block), the tokenizer (loaded once), the calibration
windows (made once, lazily, from any input :func:`prunekit.core.data_sources.calibration_windows`
accepts), the model source's config and safetensors headers (read once) and the results so far. A
step kind is a :class:`~prunekit.core.recipe.Step` dataclass with ``run(session)``; steps read and
change the session through its attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.recipe import CalibrationConfig, Recipe

# ------------------------------------------------------------------ the model source, read once

class ModelSource:
    """A model folder, embedded name or hub id, each of its files read at most once: the resolved
    path, the config, the safetensors headers (:func:`prunekit.core.shards.open_checkpoint`), the
    tokenizer."""

    def __init__(self, name: str | Path, trust_pickle_weights: bool = False):
        self.shown = str(name)
        self.trust_pickle_weights = trust_pickle_weights

    @cached_property
    def path(self) -> str:
        from prunekit.models.loading import resolve_model_path

        return resolve_model_path(self.shown)

    @cached_property
    def config(self):
        from prunekit.models.loading import load_config

        return load_config(self.path)

    @cached_property
    def checkpoint(self):
        """The safetensors headers, checked (None: no safetensors checkpoint in a local folder)."""
        from prunekit.core.shards import has_safetensors, open_checkpoint

        if not Path(self.path).is_dir() or not has_safetensors(self.path):
            return None
        return open_checkpoint(self.path, self.shown)

    def check_weights(self) -> None:
        """Safetensors only (unless trusted) and floating-point weights, from the headers read once."""
        from prunekit.core.inputs import check_weight_files
        from prunekit.models.loading import check_checkpoint_dtypes

        check_weight_files(self.path, self.shown, self.trust_pickle_weights)
        if self.checkpoint is not None:
            check_checkpoint_dtypes(self.checkpoint, self.shown)

    @cached_property
    def tokenizer(self):
        from prunekit.models.loading import load_tokenizer

        return load_tokenizer(self.path, config=self.config)


# ------------------------------------------------------------------ the session

@dataclass
class Session:
    """What the steps of one :func:`apply` share. Steps read and change it through its attributes:
    ``model`` (an ``nn.Module``; the skeleton of a streamed checkpoint while ``stream`` is set), the
    ``tokenizer`` (loaded once, on first use), :meth:`windows` (made once), ``results``."""

    recipe: Recipe
    model: nn.Module | None = None
    source: ModelSource | None = None  # where the model came from (tokenizer, teacher, manifest)
    data: Any = None  # the calibration input; None: the recipe's calibration source
    progress: bool = True
    device: str | None = None
    stream: Any = None  # oneshot.prune._Stream while a streamed step runs
    base: Any = None  # delta steps: the base model (loaded, or a folder / name loaded on first use)
    results: list = field(default_factory=list)  # one per step, in order
    _tokenizer: Any = None
    _windows: torch.Tensor | None = None

    @property
    def calibration(self) -> CalibrationConfig:
        return self.recipe.calibration

    @property
    def calibration_input(self):
        return self.calibration.source if self.data is None else self.data

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.source is not None:
                self._tokenizer = self.source.tokenizer
            elif self.model is not None and getattr(getattr(self.model, "config", None), "_name_or_path", ""):
                from prunekit.models.loading import load_tokenizer

                self._tokenizer = load_tokenizer(self.model.config._name_or_path)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value

    def windows(self) -> torch.Tensor:
        """The calibration windows (windows x tokens; padding is ``PAD``), made on first use and kept."""
        if self._windows is None:
            from prunekit.core.data_sources import calibration_windows

            c, data = self.calibration, self.calibration_input
            ready = isinstance(data, torch.Tensor)
            self._windows = calibration_windows(data, None if ready else self.tokenizer, c.nsamples, c.seqlen,
                                                c.seed, packing=c.packing)
        return self._windows

    def forget_windows(self) -> None:
        """After a step that renumbers the token ids (vocab): the next step makes new windows."""
        self._windows = None

    def result(self, kind: type):
        """The last result of type ``kind`` (e.g. :class:`~prunekit.oneshot.prune.PruneResult`), or None."""
        return next((r for r in reversed(self.results) if isinstance(r, kind)), None)


