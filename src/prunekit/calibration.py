"""The block-by-block runner: calibration statistics, pruning and the pruned forward in one pass.

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
3. The block's outputs are the next block's inputs; memory is one block's activations.

Layers fed the very same input tensor (q/k/v, gate/up) share one statistics object, so a
Hessian X^T X is accumulated once for the three attention projections, and the later siblings are
pruned on first arrival, with no second barrier (so no chunk waits holding the q or gate output).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.core.stats import LayerStats


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
    device = next(model.parameters()).device
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

    def __init__(self, layers: dict[str, nn.Module], n_chunks: int, want_hessian: bool,
                 on_ready: Callable[[str, nn.Module, LayerStats | None], None]):
        self.gates = {module: _LayerGate(name, module) for name, module in layers.items()}
        self.n_chunks = n_chunks
        self.want_hessian = want_hessian
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
                self.stats[gate.name] = LayerStats(x.shape[-1], want_hessian=self.want_hessian)
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
              want_hessian: bool = False, consume: bool = False,
              device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Push all chunks through ``block`` in lock-step; ``on_ready(name, module, stats)`` prunes a layer
    once every chunk's input to it has been seen. Returns the block's outputs, one per chunk.

    With ``consume=True`` each chunk's input is dropped as soon as its output exists, so a block
    never holds both all inputs and all outputs. With ``device`` set, the block runs there while
    the activations between blocks stay where they were (e.g. on the CPU)."""
    step = _LockStep(layers, len(inputs), want_hessian, on_ready)
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
                    outputs[chunk] = block_output(out).to(here)
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
