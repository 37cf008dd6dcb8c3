"""The block-by-block runner: calibration statistics, pruning and the pruned forward in one pass.

The one calibration engine of prunekit: one-shot methods prune each layer as soon as its
statistics are complete; structured pruning walks the dense model with an ``on_ready`` that only
keeps the statistics (:func:`walk_blocks` with ``needs={"moments", "similarity"}``).

1. :func:`capture_block_inputs` runs the model up to its first decoder block and keeps that
   block's inputs (hidden states plus the keyword arguments the model passes, such as rotary
   position embeddings and masks), one entry per chunk of calibration windows.
2. :func:`run_block` pushes every chunk through one block *at once, in lock-step*: each chunk runs
   in its own thread and waits at the entrance of every target layer until all chunks have
   arrived. The last to arrive hands the complete statistics to ``on_ready``, which prunes the
   layer; then all chunks continue through the pruned layer. So within a block the layers are
   pruned in execution order (q/k/v, o, gate/up, down), every layer sees the outputs of the pruned
   layers before it, and every matmul of the calibration data is computed exactly once, with
   pruned weights. Only one thread computes at a time (the others are parked at a barrier), so
   torch's own intra-op threads do the parallel work.
3. The block's outputs are the next block's inputs; memory is one block's activations. The weights
   may come one block at a time (:class:`BlockWeights`: in memory they are all there; a streamed
   checkpoint, :mod:`prunekit.core.shards`, loads the embeddings for step 1 and each block for its
   turn, then writes and frees it). With
   ``similarity`` in ``needs``, each block's mean over tokens of cos(input, output) is measured
   on the way (per window, summed in window order, float64).

Layers fed the very same input tensor (q/k/v, gate/up) share one statistics object, so a
Hessian X^T X is accumulated once for the three attention projections, and the later siblings are
pruned on first arrival, with no second barrier (so no chunk waits holding the q or gate output).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from prunekit.core.stats import LAYER_NEEDS, LayerStats


class _StopForward(Exception):
    pass


class _Aborted(Exception):
    pass


@dataclass
class BlockInputs:
    """Inputs of one block for one chunk of calibration windows."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict


@torch.no_grad()
def capture_block_inputs(model: nn.Module, first_block: nn.Module, windows: torch.Tensor,
                         chunk_size: int) -> list[BlockInputs]:
    """Run the embeddings and keep what the first block receives, chunk by chunk."""
    captured: list[BlockInputs] = []

    def catch(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append(BlockInputs(hidden, tuple(args[1:]), dict(kwargs)))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(catch, with_kwargs=True)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = (embeddings.weight if embeddings is not None else next(model.parameters())).device
    try:
        for start in range(0, len(windows), chunk_size):
            try:
                model(input_ids=windows[start : start + chunk_size].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def block_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class _LayerGate:
    name: str
    module: nn.Module
    arrived: set = field(default_factory=set)
    done: bool = False


class _LockStep:
    """Barrier bookkeeping for one block: which chunk reached which layer."""

    def __init__(self, layers: dict[str, nn.Module], n_chunks: int, needs: frozenset[str],
                 on_ready: Callable[[str, nn.Module, LayerStats | None], None]):
        self.gates = {module: _LayerGate(name, module) for name, module in layers.items()}
        self.n_chunks = n_chunks
        self.needs = needs
        self.on_ready = on_ready
        self.cond = threading.Condition()
        self.finished: set[int] = set()
        self.errors: list[BaseException] = []
        self.stats: dict[str, LayerStats] = {}
        self.shared: dict[str, str] = {}  # layer -> the layer whose input (and statistics) it shares
        self.done_names: set[str] = set()
        self.seen_inputs: dict[int, list[tuple[weakref.ref, str]]] = {}
        self.local = threading.local()

    # -- statistics, with siblings (same input tensor) sharing one LayerStats
    def _record_input(self, gate: _LayerGate, x: torch.Tensor, chunk: int) -> None:
        seen = self.seen_inputs.setdefault(chunk, [])
        if gate.name not in self.stats:
            owner = next((name for ref, name in seen if ref() is x), None)
            if owner is not None:
                self.stats[gate.name] = self.stats[owner]
                self.shared[gate.name] = owner
            else:
                self.stats[gate.name] = LayerStats.for_needs(x.shape[-1], self.needs)
        if gate.name not in self.shared:
            self.stats[gate.name].add(x, samples=x.shape[0] if x.dim() == 3 else 1)
        seen.append((weakref.ref(x), gate.name))

    def _ready(self, gate: _LayerGate) -> bool:
        return all(c in gate.arrived or c in self.finished for c in range(self.n_chunks))

    def _release(self, gate: _LayerGate) -> None:
        gate.done = True
        self.done_names.add(gate.name)
        self.on_ready(gate.name, gate.module, self.stats.get(gate.name))
        self.cond.notify_all()

    def pre_hook(self, module: nn.Module, args) -> None:
        gate = self.gates[module]
        chunk = self.local.chunk
        if gate.done or chunk in gate.arrived:
            return
        # statistics are summed in chunk order, whatever order the threads wake up in, so the
        # same data always gives bit-identical statistics (and masks)
        while not gate.done and not all(c in gate.arrived or c in self.finished for c in range(chunk)):
            self._wait()
        if gate.done:
            return
        self._record_input(gate, args[0], chunk)
        gate.arrived.add(chunk)
        self.cond.notify_all()
        # a layer fed the same tensor as an already-pruned layer (k/v after q, up after gate) has
        # complete statistics already: prune it now instead of parking every chunk at its entrance
        if self._ready(gate) or self.shared.get(gate.name) in self.done_names:
            self._release(gate)
            return
        while not gate.done:
            self._wait()
        if self.errors:
            raise _Aborted

    def _wait(self) -> None:
        if self.errors:
            raise _Aborted
        self.cond.wait()
        if self.errors:
            raise _Aborted

    def finish(self, chunk: int) -> None:
        """A chunk left the block: layers it never entered must not wait for it."""
        self.finished.add(chunk)
        for gate in self.gates.values():
            if not gate.done and self._ready(gate) and gate.arrived:
                self._release(gate)
        self.cond.notify_all()

    def fail(self, err: BaseException) -> None:
        if not isinstance(err, _Aborted):
            self.errors.append(err)
        self.cond.notify_all()


def to_device(value, device):
    """Move tensors, also inside tuples/lists/dicts (rotary embeddings, masks), to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def run_block(block: nn.Module, inputs: list[BlockInputs], layers: dict[str, nn.Module],
              on_ready: Callable[[str, nn.Module, LayerStats | None], None],
              needs: frozenset[str] = frozenset({"norms"}), consume: bool = False,
              device: torch.device | str | None = None,
              on_output: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
    """Push all chunks through ``block`` in lock-step; ``on_ready(name, module, stats)`` prunes a layer
    once every chunk's input to it has been seen, ``stats`` collecting what ``needs`` asks for (see
    :class:`~prunekit.core.stats.LayerStats`). Returns the block's outputs, one per chunk.

    ``on_output(chunk, block_input, block_output)``, if given, sees each chunk as it leaves the block.
    With ``consume=True`` each chunk's input is dropped as soon as its output exists, so a block
    never holds both all inputs and all outputs. With ``device`` set, the block runs there while
    the activations between blocks stay where they were (e.g. on the CPU)."""
    step = _LockStep(layers, len(inputs), frozenset(needs), on_ready)
    outputs: list[torch.Tensor | None] = [None] * len(inputs)

    def work(chunk: int) -> None:
        with step.cond:
            step.local.chunk = chunk
            try:
                with torch.no_grad():
                    item = inputs[chunk]
                    here = item.hidden.device
                    if device is None:
                        out = block(item.hidden, *item.args, **item.kwargs)
                    else:
                        out = block(item.hidden.to(device), *to_device(item.args, device),
                                    **to_device(item.kwargs, device))
                    out = block_output(out)
                    if on_output is not None:
                        on_output(chunk, item.hidden, out)
                    outputs[chunk] = out.to(here)
                if consume:
                    item.hidden = None
            except BaseException as err:  # noqa: BLE001 - handed to the main thread below
                step.fail(err)
            finally:
                step.finish(chunk)

    handles = [m.register_forward_pre_hook(step.pre_hook) for m in layers.values()]
    try:
        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for h in handles:
            h.remove()
    if step.errors:
        raise step.errors[0]
    return outputs


class BlockWeights:
    """Where the weights of the blocks are while :func:`walk_blocks` runs: in memory, all of them all
    the time (this class). A streamed source (:class:`prunekit.core.shards.StreamedBlocks`) puts
    the embeddings in place for the capture of the first block's inputs and each block for its turn
    only."""

    @contextmanager
    def inputs(self) -> Iterator[None]:
        """What the model runs before its first block is in place inside the ``with`` block."""
        yield

    @contextmanager
    def block(self, index: int, module: nn.Module) -> Iterator[None]:
        """Block ``index`` is in place inside the ``with`` block (pruned when it ends without error)."""
        yield


def window_cosines(block_input: torch.Tensor, block_output: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of cos(block input, block output), one value per window (float64)."""
    x, y = block_input.double(), block_output.to(block_input.device).double()
    return torch.nn.functional.cosine_similarity(x, y, dim=-1).mean(dim=-1).reshape(-1)


def walk_blocks(model: nn.Module, blocks, windows: torch.Tensor, chunk_size: int,
                per_block: list[dict[str, nn.Module]], on_ready: Callable[[str, nn.Module, LayerStats | None], None],
                needs: frozenset[str] = frozenset({"norms"}), progress: bool = True, desc: str = "blocks",
                device: torch.device | str | None = None, weights: BlockWeights | None = None) -> list[float]:
    """Feed the calibration windows through ``blocks`` one at a time (see :func:`run_block`).

    ``per_block[i]`` names the layers of block i whose inputs are measured; ``on_ready`` receives
    each one's statistics once complete (a one-shot method prunes the layer there; a driver that
    only wants the statistics of the dense model keeps them and leaves the weights alone).
    Returns the block similarity (:func:`window_cosines` averaged over windows, one float per
    block) when ``needs`` has ``similarity``, else an empty list. With ``device`` set (e.g.
    "cuda"), each block visits that device for its turn only, and the activations between blocks
    stay with the model (e.g. on the CPU). ``weights`` says where the blocks' weights are
    (:class:`BlockWeights`; default: all in memory)."""
    weights = weights or BlockWeights()
    layer_needs = frozenset(needs) & LAYER_NEEDS
    want_similarity = "similarity" in needs
    similarity: list[float] = []
    with weights.inputs():
        inputs = capture_block_inputs(model, blocks[0], windows, chunk_size)
    walk = zip(tqdm(blocks, desc=desc, unit="block", disable=not progress, leave=False), per_block)
    for index, (block, layers) in enumerate(walk):
        with weights.block(index, block):
            cosines: list[torch.Tensor | None] = [None] * len(inputs)

            def keep_cosines(chunk, x, y, cosines=cosines):
                cosines[chunk] = window_cosines(x, y).cpu()

            home = next(block.parameters()).device
            if device is not None:
                block.to(device)
            outputs = run_block(block, inputs, layers, on_ready, needs=layer_needs, consume=True, device=device,
                                on_output=keep_cosines if want_similarity else None)
            if device is not None:
                block.to(home)
        if want_similarity:
            total = torch.zeros((), dtype=torch.float64)
            for value in torch.cat(cosines):  # window order, whatever order the chunks finished in
                total += value
            similarity.append((total / max(len(windows), 1)).item())
        inputs = [BlockInputs(out, item.args, item.kwargs) for out, item in zip(outputs, inputs)]
        del outputs
    return similarity
