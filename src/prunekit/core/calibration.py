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

The lock-step costs memory: inside a block every chunk is parked at a layer with what the model's
own frames hold (block input, normed input, q/k/v, the MLP's wide activation...), i.e. the block's
activations for *all* calibration windows. The other runners of :data:`RUNNERS` hold one chunk's:

* ``two-pass``: run the dense block over every chunk, collecting every layer's statistics on the
  way (the outputs are dropped), prune all its layers, then run the pruned block again for the next
  block's inputs. Every layer of a block is calibrated on the *dense* block's activations (the
  scheme of the Wanda and SparseGPT reference code and of llm-compressor), so masks differ from
  the lock-step's; two block forwards instead of one.
* ``dense``: one pass per block without barriers, every layer's statistics taken on the way, then
  ``on_ready`` for every layer, and the *dense* block's outputs go on to the next block. So every
  layer is calibrated on the dense model's activations (errors of the pruned blocks before it are
  not propagated: llm-compressor's ``propagate_error=False``): one block forward and one chunk's
  activations. Walks whose ``on_ready`` leaves the weights alone (structured statistics, OWL
  scores) use it too: the very statistics the lock-step would give, bit for bit.
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

from prunekit.core.data_sources import split_padding
from prunekit.core.errors import PrunekitError
from prunekit.core.recipe import COMPUTE_DTYPES, RUNNERS
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
    tokens: torch.Tensor | None = None  # bool (windows x positions): the real tokens; None: all are


@torch.no_grad()
def capture_block_inputs(model: nn.Module, first_block: nn.Module, windows: torch.Tensor,
                         chunk_size: int, dtype: torch.dtype | None = None) -> list[BlockInputs]:
    """Run the embeddings and keep what the first block receives, chunk by chunk. With ``dtype`` the
    embeddings' output is cast to it, so what the model derives from it before the first block (rotary
    tables, masks) is computed in that dtype too."""
    captured: list[BlockInputs] = []

    def catch(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append(BlockInputs(hidden, tuple(args[1:]), dict(kwargs)))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(catch, with_kwargs=True)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if dtype is not None and embeddings is not None:
        cast = embeddings.register_forward_hook(lambda _m, _args, out: out.to(dtype))
    else:
        cast = None
    device = (embeddings.weight if embeddings is not None else next(model.parameters())).device
    try:
        for start in range(0, len(windows), chunk_size):
            ids, mask = split_padding(windows[start : start + chunk_size])
            extra = {} if mask is None else {"attention_mask": mask.to(device)}
            try:
                model(input_ids=ids.to(device), use_cache=False, **extra)
            except _StopForward:
                pass
            captured[-1].tokens = None if mask is None else mask.bool()
    finally:
        handle.remove()
        if cast is not None:
            cast.remove()
    return captured


def block_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class _LayerGate:
    name: str
    module: nn.Module
    arrived: set = field(default_factory=set)
    done: bool = False


class _StatsBook:
    """The statistics of one block's layers, in the order the layers are first entered; siblings (layers
    fed the very same input tensor) share one :class:`LayerStats`, filled once."""

    def __init__(self, needs: frozenset[str], tokens: list[torch.Tensor | None] | None = None):
        self.needs = needs
        self.tokens = tokens or []  # per chunk: the real tokens of its windows (None: all)
        self.stats: dict[str, LayerStats] = {}  # by layer name, in execution order
        self.shared: dict[str, str] = {}  # layer -> the layer whose input (and statistics) it shares
        self.seen_inputs: dict[int, list[tuple[weakref.ref, str]]] = {}

    def record(self, name: str, x: torch.Tensor, chunk: int) -> None:
        seen = self.seen_inputs.setdefault(chunk, [])
        if name not in self.stats:
            owner = next((other for ref, other in seen if ref() is x), None)
            if owner is not None:
                self.stats[name] = self.stats[owner]
                self.shared[name] = owner
            else:
                self.stats[name] = LayerStats.for_needs(x.shape[-1], self.needs)
        if name not in self.shared:
            samples = x.shape[0] if x.dim() == 3 else 1
            tokens = self.tokens[chunk] if chunk < len(self.tokens) else None
            if tokens is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(tokens.shape):
                x = x[tokens.to(x.device)]  # padding is never calibrated
            self.stats[name].add(x, samples=samples)
        seen.append((weakref.ref(x), name))


class _LockStep:
    """Barrier bookkeeping for one block: which chunk reached which layer."""

    def __init__(self, layers: dict[str, nn.Module], n_chunks: int, needs: frozenset[str],
                 on_ready: Callable[[str, nn.Module, LayerStats | None], None],
                 tokens: list[torch.Tensor | None] | None = None):
        self.gates = {module: _LayerGate(name, module) for name, module in layers.items()}
        self.n_chunks = n_chunks
        self.on_ready = on_ready
        self.cond = threading.Condition()
        self.finished: set[int] = set()
        self.errors: list[BaseException] = []
        self.book = _StatsBook(needs, tokens)
        self.stats, self.shared = self.book.stats, self.book.shared
        self.done_names: set[str] = set()
        self.local = threading.local()

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
        self.book.record(gate.name, args[0], chunk)
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


def to_device(value, device, dtype: torch.dtype | None = None):
    """Move tensors, also inside tuples/lists/dicts (rotary embeddings, masks), to ``device``; with
    ``dtype``, floating-point tensors are cast to it too."""
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype) if dtype is not None and value.is_floating_point() else value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device, dtype) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device, dtype) for k, v in value.items()}
    return value




def resolve_compute_dtype(name: str, storage: torch.dtype, reconstructs: bool) -> torch.dtype | None:
    """The dtype blocks compute in while they are calibrated, or None for the weights' own (``storage``).

    ``auto``: float32 for a method that rewrites the kept weights from the calibration activations
    (SparseGPT) when the weights are 16-bit, because its reconstruction follows the rounding of every
    activation it sees (SmolLM2 SparseGPT 50%: perplexity +5.7% over float32 when computed in bf16,
    +0.1% when computed in float32 and saved in bf16: ``benchmarks/results/families.md``); else the
    weights' own dtype."""
    if name not in COMPUTE_DTYPES:
        raise PrunekitError(f"compute dtype {name!r} is unknown; choose from {', '.join(COMPUTE_DTYPES)}")
    if name == "auto":
        return torch.float32 if reconstructs and storage in (torch.bfloat16, torch.float16) else None
    dtype = getattr(torch, name)
    return None if dtype == storage else dtype


@contextmanager
def visiting(block: nn.Module, device: torch.device | str | None, dtype: torch.dtype | None) -> Iterator[None]:
    """``block`` on ``device`` with its floating-point parameters in ``dtype`` for its turn; afterwards every
    parameter goes back to its own dtype (kept weights round once) and the block to where it was."""
    if device is None and dtype is None:
        yield
        return
    home = next(block.parameters()).device
    own = {p: p.dtype for p in block.parameters()}
    if device is not None:
        block.to(device)
    if dtype is not None:
        for p in own:
            if p.is_floating_point():
                p.data = p.data.to(dtype)
    try:
        yield
    finally:
        for p, original in own.items():
            p.data = p.data.to(original)
        if device is not None:
            block.to(home)




def _forward(block: nn.Module, item: BlockInputs, device) -> torch.Tensor:
    """One chunk through ``block`` (on ``device`` when given); the block's hidden-state output."""
    if device is None:
        return block_output(block(item.hidden, *item.args, **item.kwargs))
    return block_output(block(item.hidden.to(device), *to_device(item.args, device),
                              **to_device(item.kwargs, device)))


def run_block(block: nn.Module, inputs: list[BlockInputs], layers: dict[str, nn.Module],
              on_ready: Callable[[str, nn.Module, LayerStats | None], None],
              needs: frozenset[str] = frozenset({"norms"}), consume: bool = False,
              device: torch.device | str | None = None,
              on_output: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
              runner: str = "lockstep") -> list[torch.Tensor]:
    """Push all chunks through ``block``; ``on_ready(name, module, stats)`` prunes a layer once every
    chunk's input to it has been seen, ``stats`` collecting what ``needs`` asks for (see
    :class:`~prunekit.core.stats.LayerStats`). Returns the block's outputs, one per chunk.

    ``runner`` (:data:`RUNNERS`, see the module docstring): ``lockstep`` calibrates every layer on
    the pruned layers before it in one pass; ``two-pass`` calibrates the dense block, prunes, and
    runs it again; ``dense`` calibrates and prunes every layer on the dense block and passes the dense
    block's outputs on (one pass; also the runner of walks whose ``on_ready`` leaves the weights alone).
    ``on_output(chunk, block_input, block_output)``, if given, sees each chunk as it leaves the block.
    With ``consume=True`` each chunk's input is dropped as soon as its output exists, so a block
    never holds both all inputs and all outputs. With ``device`` set, the block runs there while
    the activations between blocks stay where they were (e.g. on the CPU)."""
    if runner not in RUNNERS:
        raise PrunekitError(f"runner {runner!r} is unknown; choose from {', '.join(RUNNERS)}")
    if runner == "lockstep":
        return _run_lockstep(block, inputs, layers, on_ready, needs, consume, device, on_output)
    observed = runner == "dense"
    book = _StatsBook(frozenset(needs), [item.tokens for item in inputs])
    outputs = _run_observed(block, inputs, layers, book, keep=observed, consume=consume and observed, device=device,
                            on_output=on_output if observed else None)
    last = {id(stats): name for name, stats in book.stats.items()}
    for name, stats in book.stats.items():  # execution order, as the lock-step releases them
        stats.last_reader = last[id(stats)] == name  # e.g. v for q/k/v: SparseGPT may then consume the Hessian
        on_ready(name, layers[name], stats)
    if observed:
        return outputs
    return _run_observed(block, inputs, {}, None, keep=True, consume=consume, device=device, on_output=on_output)


@torch.no_grad()
def _run_observed(block, inputs, layers, book, keep, consume, device, on_output) -> list[torch.Tensor | None]:
    """Each chunk through ``block`` in turn, no barrier; ``book`` records the inputs of ``layers``. Without
    ``keep`` (the outputs are not wanted) a chunk stops as soon as every layer has seen its input, so
    the last layer's own product (down_proj's, a sixth of a Llama block) is never computed."""
    chunk_now = [0]
    seen: set[str] = set()

    def record(module, args):
        book.record(names[module], args[0], chunk_now[0])
        seen.add(names[module])
        if not keep and len(seen) == len(names):
            raise _StopForward

    names = {module: name for name, module in layers.items()}
    handles = [m.register_forward_pre_hook(record) for m in layers.values()]
    outputs: list[torch.Tensor | None] = [None] * len(inputs)
    try:
        for chunk, item in enumerate(inputs):
            chunk_now[0] = chunk
            seen.clear()
            try:
                out = _forward(block, item, device)
            except _StopForward:
                continue
            if on_output is not None:
                on_output(chunk, item.hidden, out)
            if keep:
                outputs[chunk] = out.to(item.hidden.device)
            if consume:
                item.hidden = None
            del out
    finally:
        for h in handles:
            h.remove()
    return outputs


def _run_lockstep(block, inputs, layers, on_ready, needs, consume, device, on_output) -> list[torch.Tensor]:
    step = _LockStep(layers, len(inputs), frozenset(needs), on_ready, [item.tokens for item in inputs])
    outputs: list[torch.Tensor | None] = [None] * len(inputs)

    def work(chunk: int) -> None:
        with step.cond:
            step.local.chunk = chunk
            try:
                with torch.no_grad():
                    item = inputs[chunk]
                    out = _forward(block, item, device)
                    if on_output is not None:
                        on_output(chunk, item.hidden, out)
                    outputs[chunk] = out.to(item.hidden.device)
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
        try:
            for t in threads:
                t.join()
        except BaseException as err:  # Ctrl-C or SIGTERM in the main thread: stop the workers, then leave
            with step.cond:  # a worker computing holds the lock until its next gate, where it sees the error
                step.fail(err)
            for t in threads:
                t.join()  # no thread may outlive the block (it would abort the interpreter at exit)
            raise
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


def window_cosines(block_input: torch.Tensor, block_output: torch.Tensor,
                   tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens (the real ones, with ``tokens``) of cos(block input, block output), one value per
    window (float64)."""
    x, y = block_input.double(), block_output.to(block_input.device).double()
    cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
    if tokens is None:
        return cos.mean(dim=-1).reshape(-1)
    real = tokens.to(cos.device, torch.float64)
    return ((cos * real).sum(dim=-1) / real.sum(dim=-1).clamp(min=1)).reshape(-1)


def walk_blocks(model: nn.Module, blocks, windows: torch.Tensor, chunk_size: int,
                per_block: list[dict[str, nn.Module]], on_ready: Callable[[str, nn.Module, LayerStats | None], None],
                needs: frozenset[str] = frozenset({"norms"}), progress: bool = True, desc: str = "blocks",
                device: torch.device | str | None = None, weights: BlockWeights | None = None,
                runner: str = "lockstep", compute_dtype: torch.dtype | None = None) -> list[float]:
    """Feed the calibration windows through ``blocks`` one at a time (see :func:`run_block`).

    ``per_block[i]`` names the layers of block i whose inputs are measured; ``on_ready`` receives
    each one's statistics once complete (a one-shot method prunes the layer there; a driver that
    only wants the statistics of the dense model keeps them and leaves the weights alone).
    Returns the block similarity (:func:`window_cosines` averaged over windows, one float per
    block) when ``needs`` has ``similarity``, else an empty list. With ``device`` set (e.g.
    "cuda"), each block visits that device for its turn only, and the activations between blocks
    stay with the model (e.g. on the CPU). ``weights`` says where the blocks' weights are
    (:class:`BlockWeights`; default: all in memory). ``runner`` is one of :data:`RUNNERS` (see
    :func:`run_block`). With ``compute_dtype`` (see :func:`resolve_compute_dtype`) the activations
    and each block for its turn are in that dtype; the weights are stored back in their own."""
    if runner not in RUNNERS:
        raise PrunekitError(f"runner {runner!r} is unknown; choose from {', '.join(RUNNERS)}")
    weights = weights or BlockWeights()
    layer_needs = frozenset(needs) & LAYER_NEEDS
    want_similarity = "similarity" in needs
    similarity: list[float] = []
    with weights.inputs():
        inputs = capture_block_inputs(model, blocks[0], windows, chunk_size, compute_dtype)
    if compute_dtype is not None:  # whatever did not derive from the embeddings' output
        inputs = [BlockInputs(item.hidden.to(dtype=compute_dtype), to_device(item.args, None, compute_dtype),
                              to_device(item.kwargs, None, compute_dtype), item.tokens) for item in inputs]
    walk = zip(tqdm(blocks, desc=desc, unit="block", disable=not progress, leave=False), per_block)
    for index, (block, layers) in enumerate(walk):
        with weights.block(index, block):
            cosines: list[torch.Tensor | None] = [None] * len(inputs)

            tokens = [item.tokens for item in inputs]

            def keep_cosines(chunk, x, y, cosines=cosines, tokens=tokens):
                cosines[chunk] = window_cosines(x, y, tokens[chunk]).cpu()

            with visiting(block, device, compute_dtype):
                outputs = run_block(block, inputs, layers, on_ready, needs=layer_needs, consume=True, device=device,
                                    on_output=keep_cosines if want_similarity else None, runner=runner)
        if want_similarity:
            total = torch.zeros((), dtype=torch.float64)
            for value in torch.cat(cosines):  # window order, whatever order the chunks finished in
                total += value
            similarity.append((total / max(len(windows), 1)).item())
        inputs = [BlockInputs(out, item.args, item.kwargs, item.tokens) for out, item in zip(outputs, inputs)]
        del outputs
    return similarity
