"""Where each model family keeps its decoder blocks, and how its linear layers store weights.

Everything family-specific lives here, so the calibration runner and the methods never branch on
the architecture. GPT-2's ``Conv1D`` stores its weight transposed (in x out); ``weight_view``
hides that by returning an (out x in) view that writes through to the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# model_type -> attribute path of the ModuleList of decoder blocks
BLOCK_PATHS = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "opt": "model.decoder.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}
SUPPORTED_FAMILIES = ("Llama", "Mistral", "Qwen2", "Qwen3", "OPT", "GPT-2", "GPT-NeoX")


class UnsupportedModelError(ValueError):
    pass


def check_supported(model_type: str) -> None:
    if model_type not in BLOCK_PATHS:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )


def is_prunable_linear(module: nn.Module) -> bool:
    """nn.Linear, or transformers' Conv1D (GPT-2), which is a linear layer with a transposed weight."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def weight_view(module: nn.Module) -> torch.Tensor:
    """The weight as an (out_features, in_features) tensor sharing storage with the parameter."""
    w = module.weight.data
    return w.t() if type(module).__name__ == "Conv1D" else w


@dataclass
class Adapter:
    model: nn.Module
    family: str

    @property
    def blocks(self) -> nn.ModuleList:
        obj = self.model
        for part in BLOCK_PATHS[self.family].split("."):
            obj = getattr(obj, part)
        return obj

    @property
    def block_prefix(self) -> str:
        return BLOCK_PATHS[self.family]

    def linears(self, block_index: int) -> dict[str, nn.Module]:
        """Prunable linear layers of one block, in execution order, keyed by their full module name."""
        prefix = f"{self.block_prefix}.{block_index}"
        return {f"{prefix}.{n}": m for n, m in self.blocks[block_index].named_modules() if is_prunable_linear(m)}


def adapter_for(model: nn.Module) -> Adapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no Hugging Face config; supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )
    check_supported(model_type)
    return Adapter(model, model_type)
