"""Calibration statistics for structured criteria, collected in passes over the *dense* model.

* activations: per input channel of each group consumer (o_proj, down_proj, ...): the mean, the
  variance and the mean square over calibration tokens (FLAP, CFSP, bias compensation);
* block similarity: mean over tokens of cos(block input, block output) (ShortGPT's block
  influence is 1 minus this);
* gradients: d(mean next-token loss)/dW for every linear layer in the blocks, averaged over the
  calibration windows (LLM-Pruner's first-order Taylor term).

Global allocation ranks all layers at once, so every score comes from the same dense model; the
statistics are keyed by module name and can be reused on a deep copy of that model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from prunekit.calibration import block_output
from prunekit.core.families import Adapter, as_out_in, weight_view


@dataclass
class ChannelStats:
    """Running first and second moments of one layer's input channels (float64)."""

    total: torch.Tensor
    squares: torch.Tensor
    tokens: int = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        self.total += x.sum(dim=0)
        self.squares += x.pow(2).sum(dim=0)
        self.tokens += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.tokens, 1)

    @property
    def mean_square(self) -> torch.Tensor:
        return self.squares / max(self.tokens, 1)

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased sample variance over tokens."""
        n = max(self.tokens, 2)
        return ((self.squares - self.total.pow(2) / n) / (n - 1)).clamp_min(0.0)


@dataclass
class Statistics:
    activations: dict[str, ChannelStats] = field(default_factory=dict)
    block_similarity: list[float] = field(default_factory=list)
    gradients: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)
    windows: int = 0


@torch.no_grad()
def collect_activations(adapter: Adapter, windows: torch.Tensor, consumers: dict[str, nn.Module],
                        stats: Statistics, progress: bool = False) -> None:
    """One forward pass per window with hooks on the consumers and on every block."""
    acts = {name: ChannelStats(torch.zeros(_in_features(m), dtype=torch.float64),
                               torch.zeros(_in_features(m), dtype=torch.float64)) for name, m in consumers.items()}
    sims = torch.zeros(len(adapter.blocks), dtype=torch.float64)
    handles = []
    for name, module in consumers.items():
        handles.append(module.register_forward_pre_hook(lambda _m, args, s=acts[name]: s.add(args[0])))

    def block_hook(i):
        def hook(_m, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = block_output(out)
            sims[i] += torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).mean()
        return hook

    for i, block in enumerate(adapter.blocks):
        handles.append(block.register_forward_hook(block_hook(i), with_kwargs=True))
    device = next(adapter.model.parameters()).device
    try:
        for k in tqdm(range(len(windows)), desc="statistics", disable=not progress, leave=False):
            adapter.model(input_ids=windows[k : k + 1].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    stats.activations.update(acts)
    stats.block_similarity = (sims / max(len(windows), 1)).tolist()
    stats.windows = len(windows)


def collect_gradients(adapter: Adapter, windows: torch.Tensor, layers: dict[str, nn.Module], stats: Statistics,
                      progress: bool = False) -> None:
    """Mean over windows of the gradient of the window's mean next-token loss (weights and biases)."""
    model = adapter.model
    flags = {p: p.requires_grad for p in model.parameters()}
    params = [p for m in layers.values() for p in (m.weight, m.bias) if p is not None]
    acc = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in params}
    device = next(model.parameters()).device
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        for k in tqdm(range(len(windows)), desc="gradients", disable=not progress, leave=False):
            ids = windows[k : k + 1].to(device)
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                acc[id(p)] += g.float() / len(windows)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    for name, m in layers.items():
        stats.gradients[name] = (as_out_in(m, acc[id(m.weight)]), acc[id(m.bias)] if m.bias is not None else None)


def _in_features(module: nn.Module) -> int:
    return weight_view(module).shape[1]
