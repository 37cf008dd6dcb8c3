"""Perplexity of a document under a causal LM: ``exp`` of :mod:`~prunekit.data.scores.lm_loss`.
Higher = harder. It ranks documents exactly as ``lm_loss`` does, on a multiplicative scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunekit.core.registry import SCORES
from prunekit.data.scores.base import Score
from prunekit.data.scores.lm_loss import document_losses


@SCORES.register("perplexity")
@dataclass
class Perplexity(Score):
    """exp(mean next-token NLL) of a document under a causal LM."""

    flags = "atypical"
    needs = frozenset({"language model"})

    def compute(self, ctx):
        return np.exp(document_losses(ctx))
