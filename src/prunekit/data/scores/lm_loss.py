"""Language-model loss of a document: the mean next-token negative log-likelihood of its first
``max_tokens`` tokens under a causal LM. Higher = harder (less typical for the model)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prunekit.core.registry import SCORES
from prunekit.data.scores.base import Score, ScoreContext


@torch.inference_mode()
def document_nll(model, tokenizer, text: str, max_tokens: int = 256) -> float:
    """Mean next-token negative log-likelihood of ``text`` (first ``max_tokens`` tokens); NaN under 2 tokens."""
    ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"]
    if ids.shape[1] < 2:
        return float("nan")
    logits = model(input_ids=ids).logits[0, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))


def document_losses(ctx: ScoreContext) -> np.ndarray:
    """:func:`document_nll` of every document of ``ctx`` (computed once per context, in eval mode)."""

    def compute() -> np.ndarray:
        texts = ctx.texts
        if ctx.progress:
            from tqdm.auto import tqdm

            texts = tqdm(texts, desc="lm score", leave=False)
        was_training = ctx.model.training
        ctx.model.eval()
        loss = np.array([document_nll(ctx.model, ctx.tokenizer, t, ctx.max_tokens) for t in texts])
        ctx.model.train(was_training)
        return loss

    return ctx.cached("document_nll", compute)


@SCORES.register("lm_loss")
@dataclass
class LMLoss(Score):
    """Mean next-token negative log-likelihood of a document under a causal LM."""

    flags = "atypical"
    needs = frozenset({"language model"})

    def compute(self, ctx):
        return document_losses(ctx)
