"""The one per-layer loop: which layers a step prunes, the seed of each, and the pass that hands each
target layer to a driver's ``prune_layer(name, module, stats)``.

One-shot pruning (in memory and streamed), delta pruning and every other driver that prunes the
linear layers of a model's blocks one at a time walk them here:

* :func:`target_layers` -- the layers of each block matched by ``targets`` minus ``ignore``;
* :func:`layer_generator` -- the generator of one layer's random choices (same seed, same layer name:
  same draws, whatever order the layers are visited in);
* :func:`prune_layers` -- with statistics to collect, the calibration windows run through the blocks
  (:func:`prunekit.core.calibration.walk_blocks`) and each layer is handed over as soon as its
  statistics are complete; without, each block is put in place in turn (``weights.block``: a
  streamed block is read, then written and freed) and its layers are handed over with ``None``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from prunekit.core.calibration import BlockWeights, walk_blocks
from prunekit.core.errors import PrunekitError
from prunekit.core.families import Adapter
from prunekit.core.stats import LayerStats
from prunekit.core.targets import select_layers

PruneLayer = Callable[[str, nn.Module, LayerStats | None], None]


def target_layers(adapter: Adapter, targets: list[str], ignore: list[str]) -> list[dict[str, nn.Module]]:
    """The target layers of every block (``targets`` minus ``ignore``, see :mod:`prunekit.core.targets`),
    one dict per block; a one-line error when they match no layer at all."""
    per_block = [select_layers(adapter.linears(i), targets, ignore) for i in range(len(adapter.blocks))]
    if not any(per_block):
        raise PrunekitError(f"targets {targets} minus ignore {ignore} match no layer in the model's blocks")
    return per_block


def layer_generator(seed: int, name: str) -> torch.Generator:
    """The generator of layer ``name``'s random choices: seeded by ``seed`` and the layer's name."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def prune_layers(adapter: Adapter, per_block: list[dict[str, nn.Module]], prune_layer: PruneLayer, *,
                 needs: frozenset[str] = frozenset(), windows: torch.Tensor | None = None, chunk_size: int = 8,
                 runner: str = "lockstep", compute_dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, weights: BlockWeights | None = None,
                 progress: bool = True, desc: str = "blocks") -> None:
    """Call ``prune_layer(name, module, stats)`` for every layer of ``per_block`` (block by block).

    With ``needs`` (statistics of :data:`prunekit.core.stats.NEEDS`) the ``windows`` run through the
    blocks and ``stats`` are the layer's (``chunk_size``, ``runner``, ``compute_dtype`` and
    ``device`` as in :func:`~prunekit.core.calibration.walk_blocks`); the pruned layer's outputs feed
    the layers after it. Without, ``stats`` is None and no data runs. ``weights`` says where the
    blocks' weights are (default: in memory)."""
    weights = weights or BlockWeights()
    if needs:
        walk_blocks(adapter.model, adapter.blocks, windows, chunk_size, per_block, prune_layer, needs=needs,
                    progress=progress, desc=desc, device=device, weights=weights, runner=runner,
                    compute_dtype=compute_dtype)
        return
    for index, layers in enumerate(tqdm(per_block, desc=desc, disable=not progress, leave=False)):
        with weights.block(index, adapter.blocks[index]):
            for name, module in layers.items():
                prune_layer(name, module, None)
