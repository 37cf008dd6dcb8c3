"""Per-document scores for text corpora from a causal language model.

The text scores are the entries of :data:`~prunekit.core.registry.SCORES` that need a
``"language model"`` (``lm_loss``: the mean next-token negative log-likelihood of a document's first
``max_tokens`` tokens; ``perplexity``: ``exp`` of it). Higher = harder (less typical for the model).
Documents get the same stable ids (index + content hash) as images, so a corpus is filtered with the
same :mod:`prunekit.data.select` selectors.

``brown_documents`` reads the Brown corpus through :func:`prunekit.core.data_sources.brown_document`, the
same reader (and detokenizer) as the calibration and evaluation text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from prunekit.core.registry import SCORES
from prunekit.data.scores.base import ScoreContext


def text_scores() -> list[str]:
    """The registered scores of a text corpus (those computed from a language model)."""
    return [name for name in SCORES.names() if SCORES.get(name).stage() == "text"]


def brown_documents(limit: int | None = None, max_words: int | None = None) -> list[tuple[str, str]]:
    """``(file name, text)`` for the Brown corpus files (all genres), in file-name order.

    ``max_words`` keeps the first words of each document (and the whitespace between them)."""
    from prunekit.core.data_sources import BROWN_GENRES, brown_document, brown_files

    files = brown_files(BROWN_GENRES)
    if limit is not None:
        files = files[:limit]
    docs = []
    for path in files:
        text = brown_document(path)
        if max_words is not None:
            text = "".join(re.findall(r"\S+\s*", text)[:max_words]).rstrip()
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


def lm_document_scores(model, tokenizer, texts: Sequence[str], max_tokens: int = 256, progress: bool = False,
                       names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """``{name: one value per document}`` for the text scores ``names`` (default: all of them)."""
    ctx = ScoreContext(model=model, tokenizer=tokenizer, texts=list(texts), max_tokens=max_tokens, progress=progress)
    names = text_scores() if names is None else names
    return {name: SCORES.build(name)(ctx) for name in names}
