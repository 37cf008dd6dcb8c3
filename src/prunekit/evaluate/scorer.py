"""Scoring zero-shot tasks the way lm-eval-harness scores them, batched.

Every question becomes requests ``(context, continuation)``; a request's result is the summed
log-likelihood of the continuation's tokens after the context, and whether each of them is the
model's most likely next token (greedy). Tokenization follows lm-eval's ``_encode_pair``: spaces
at the end of the context move to the continuation, the whole text is encoded and the
continuation's tokens are those after the context's (the tokenizer adds its special tokens as by
default). The model reads ``(context + continuation)[:-1]``, cut on the left to its positions.

Requests with the same model input (the choices of one context that are one token each, as
``brown-genre``'s labels) share one run of the model. Batches hold inputs of similar length
(sorted, longest first) up to a token budget. They are padded on the right: causal attention keeps every real token from seeing the padding after it,
so each request's log-likelihood is the one it gets alone.

Multiple choice (lm-eval's ``multiple_choice``): ``acc`` is right when the right choice has the
highest summed log-likelihood; ``acc_norm`` when it has the highest log-likelihood per character
of the choice; ties go to the first choice (``numpy.argmax``). Last word (lm-eval's
``loglikelihood``, as LAMBADA): ``acc`` is right when the greedy continuation is exactly the
target; ``perplexity`` is exp(-mean log-likelihood of the target). Standard errors are the sample
standard deviation over items / sqrt(n) (lm-eval's ``mean_stderr``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from prunekit.core.errors import PrunekitError
from prunekit.core.data_sources import check_count
from prunekit.evaluate.tasks.base import LAST_WORD, Task, stderr_of_mean

BATCH_TOKENS = 2048  # padded tokens per forward pass (the logits of 2048 tokens x 49k vocab: 400 MB)
MAX_BATCH = 64


def max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens), as lm-eval-harness splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer.encode(context + continuation)
    head = tokenizer.encode(context)
    return whole[: len(head)], whole[len(head):]


def _batches(lengths: list[int], batch_tokens: int, max_batch: int) -> list[list[int]]:
    """Request indices grouped longest first; a group's padded size stays within ``batch_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups, current = [], []
    for i in order:
        if current and ((len(current) + 1) * lengths[current[0]] > batch_tokens or len(current) >= max_batch):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def _prepare(tokenizer, requests, limit: int | None) -> tuple[list[list[int]], list[list[int]]]:
    """(model inputs, scored tokens) of each request: inputs are ``(context + continuation)[:-1]`` cut
    on the left to ``limit`` tokens; the scored tokens are the continuation's last ones that fit."""
    inputs, tails = [], []
    for context, continuation in requests:
        head, tail = encode_pair(tokenizer, context, continuation)
        if not tail:
            raise PrunekitError(f"continuation {continuation!r} has no tokens after context {context[-40:]!r}")
        ids = (head + tail)[-(limit + 1):] if limit else head + tail
        inputs.append(ids[:-1])
        tails.append(ids[-min(len(tail), len(ids) - 1):])
    return inputs, tails


@torch.inference_mode()
def loglikelihoods(model, tokenizer, requests: list[tuple[str, str]], batch_tokens: int = BATCH_TOKENS,
                   max_batch: int = MAX_BATCH, progress: bool = False, desc: str = "score") -> list[tuple[float, bool]]:
    """(summed log-likelihood, greedy) of each ``(context, continuation)`` request."""
    check_count(batch_tokens, "batch_tokens")
    inputs, tails = _prepare(tokenizer, requests, max_positions(model))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
    shared: dict[tuple[int, ...], list[int]] = {}  # one model input -> the requests that read it
    for i, ids in enumerate(inputs):
        shared.setdefault(tuple(ids), []).append(i)
    runs = list(shared.values())  # each run of the model serves the requests of one input
    groups = _batches([len(inputs[run[0]]) for run in runs], batch_tokens, max_batch)
    try:
        for group in tqdm(groups, desc=desc, disable=not progress, leave=False):
            batch = torch.zeros(len(group), len(inputs[runs[group[0]][0]]), dtype=torch.long)
            for row, u in enumerate(group):
                ids = inputs[runs[u][0]]
                batch[row, : len(ids)] = torch.tensor(ids)
            positions = sorted({p for u in group for i in runs[u]
                                for p in range(len(inputs[i]) - len(tails[i]), len(inputs[i]))})
            logits = logits_at(model, batch.to(device), positions)
            column = {p: c for c, p in enumerate(positions)}
            for row, u in enumerate(group):
                for i in runs[u]:
                    n, wanted = len(inputs[i]), torch.tensor(tails[i], device=device)
                    first = column[n - len(wanted)]  # the request's positions are consecutive columns
                    scores = torch.log_softmax(logits[row, first: first + len(wanted)].float(), dim=-1)
                    picked = scores.gather(1, wanted[:, None])[:, 0]
                    results[i] = (float(picked.sum()), bool((scores.argmax(-1) == wanted).all()))
    finally:
        model.train(was_training)
    return results


def logits_at(model, batch: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Logits at ``positions`` (sorted) of every row: only those go through the (large) output layer
    where the model takes ``logits_to_keep``; else all are computed and the positions picked."""
    keep = torch.tensor(positions, device=batch.device)
    try:
        logits = model(input_ids=batch, use_cache=False, logits_to_keep=keep).logits
    except TypeError:  # a model without logits_to_keep
        return model(input_ids=batch, use_cache=False).logits[:, keep]
    if logits.shape[1] != len(positions):  # an older model that ignored it
        return logits[:, keep]
    return logits


@dataclass
class TaskResult:
    """Accuracy of one task: each metric with its standard error, over ``n`` items."""

    task: str
    version: str
    n: int
    chance: float
    metrics: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    digest: str = ""

    def to_dict(self) -> dict:
        return {"task": self.task, "version": self.version, "n": self.n, "chance": self.chance,
                **self.metrics, **{f"{k}_stderr": v for k, v in self.stderr.items()},
                "seconds": self.seconds, "digest": self.digest}

    def summary(self) -> str:
        parts = [f"{k} {v:.4f} ± {self.stderr[k]:.4f}" if k in self.stderr else f"{k} {v:.3f}"
                 for k, v in self.metrics.items()]
        return f"{self.task:<20} {', '.join(parts)}  (n={self.n}, chance {self.chance:.2f}, {self.seconds:.1f} s)"


def score_items(model, tokenizer, task: Task, limit: int | None = None, batch_tokens: int = BATCH_TOKENS,
                progress: bool = False) -> TaskResult:
    """Score the first ``limit`` items of ``task`` (all when None)."""
    start = time.perf_counter()
    items = task.items(limit)
    requests = [(item.context, c) for item in items for c in item.continuations()]
    results = loglikelihoods(model, tokenizer, requests, batch_tokens, progress=progress, desc=task.name)
    per_item: dict[str, list[float]] = {}
    cursor = 0
    for item in items:
        got = results[cursor: cursor + len(item.continuations())]
        cursor += len(got)
        for metric, value in _item_metrics(task, item, got).items():
            per_item.setdefault(metric, []).append(value)
    metrics = {k: sum(v) / len(v) for k, v in per_item.items()}
    stderr = {k: stderr_of_mean(v) for k, v in per_item.items() if k != "loglikelihood"}
    if "loglikelihood" in metrics:  # last word: perplexity of the target, like lm-eval's LAMBADA
        metrics["perplexity"] = math.exp(-metrics.pop("loglikelihood"))
    return TaskResult(task.name, task.version, len(items), task.chance, metrics, stderr,
                      time.perf_counter() - start, task.digest(limit))


def _item_metrics(task: Task, item, results: list[tuple[float, bool]]) -> dict[str, float]:
    if task.kind == LAST_WORD:
        loglikelihood, greedy = results[0]
        return {"acc": float(greedy), "loglikelihood": loglikelihood}
    lls = [ll for ll, _ in results]
    norm = [ll / len(choice) for ll, choice in zip(lls, item.choices)]
    return {"acc": float(_argmax(lls) == item.label), "acc_norm": float(_argmax(norm) == item.label)}


def _argmax(values: list[float]) -> int:
    """Index of the largest value, the first one on ties (as numpy.argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))
