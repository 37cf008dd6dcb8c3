"""Loading causal LMs (hub id, local folder, or the embedded ``smollm2-135m``).

What a model family means (blocks, attention and MLP layout) is in :mod:`prunekit.core.families`.
"""

from prunekit.models.loading import load_model, load_tokenizer, resolve_model_path

__all__ = ["load_model", "load_tokenizer", "resolve_model_path"]
