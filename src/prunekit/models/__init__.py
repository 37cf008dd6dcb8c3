"""Loading causal LMs (hub id, local folder, or the embedded ``smollm2-135m``) and family adapters."""

from prunekit.models.adapters import SUPPORTED_FAMILIES, Adapter, adapter_for
from prunekit.models.loading import load_model, load_tokenizer, resolve_model_path

__all__ = ["SUPPORTED_FAMILIES", "Adapter", "adapter_for", "load_model", "load_tokenizer", "resolve_model_path"]
