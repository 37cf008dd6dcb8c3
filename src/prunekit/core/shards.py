"""A safetensors checkpoint one block at a time: the model without weights, per-tensor loading, shard writing.

The streaming prune (``prunekit.prune_pretrained``, the default of ``prunekit prune`` on a folder
or a name) never holds the whole model:

1. :func:`open_checkpoint` reads the headers of every shard (``model.safetensors``, or the files
   named by ``model.safetensors.index.json``): a missing, truncated or garbage shard is a one-line
   error before any work starts. No tensor data is read.
2. :func:`empty_model` builds the model from its config under accelerate's ``init_empty_weights``:
   every parameter lives on the ``meta`` device (no memory); buffers computed at construction
   (rotary frequencies) are real.
3. :class:`StreamedWeights` puts the tensors of one part of the model (the embeddings, one block)
   in place from the shards with ``safetensors.safe_open`` (one tensor at a time; the file is
   opened and mapped only while that part loads) and accelerate's ``set_module_tensor_to_device``,
   and sends them back to ``meta`` afterwards. It is what the block runner
   (:func:`prunekit.core.calibration.walk_blocks`) asks for the weights of each block.
4. :class:`ShardWriter` writes the output one shard per block (``model-0000i-of-0000n.safetensors``
   plus the index), then the tensors outside the blocks, read again from the input, so the
   output folder loads with plain ``AutoModelForCausalLM.from_pretrained``.

Peak memory is one block (or the largest tensor outside the blocks, usually the embeddings) plus
what runs through it, not the model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from prunekit.core.calibration import BlockWeights
from prunekit.core.errors import PrunekitError
from prunekit.core.memory import release_memory

class NotStreamable(PrunekitError):
    """The model cannot be pruned block by block from its files (its message says why, as a phrase);
    it is pruned in memory instead."""


SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                 "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _describe(err: BaseException) -> str:
    from prunekit.core.io import describe_error

    return describe_error(err)


# ------------------------------------------------------------------ reading the headers


@dataclass
class Checkpoint:
    """Where every tensor of a safetensors checkpoint is (file, shape, dtype), read from the headers only."""

    folder: Path
    files: dict[str, str] = field(default_factory=dict)  # tensor key -> file name in folder
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  # safetensors dtype names: F32, BF16, ...

    @property
    def shard_names(self) -> list[str]:
        return sorted(set(self.files.values()))

    def read(self, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """The tensors ``keys`` in the order given, one at a time; a file is opened (and mapped) only
        while its tensors are read, so the pages it maps are released again."""
        handle, name = None, None
        try:
            for key in keys:
                if self.files[key] != name:
                    if handle is not None:
                        handle.__exit__(None, None, None)
                        handle = None
                    name = self.files[key]
                    handle = safe_open(str(self.folder / name), framework="pt")
                    handle.__enter__()
                yield key, handle.get_tensor(key)
        finally:
            if handle is not None:
                handle.__exit__(None, None, None)


def has_safetensors(folder: str | Path) -> bool:
    """Whether ``folder`` holds a safetensors checkpoint that :func:`open_checkpoint` reads."""
    folder = Path(folder)
    return (folder / INDEX).is_file() or (folder / SINGLE).is_file()


def open_checkpoint(folder: str | Path, shown: str | None = None) -> Checkpoint:
    """The headers of a ``model.safetensors`` or of every shard the index names, checked: a missing,
    truncated or garbage shard, an unreadable index, or a tensor the index places in a shard that
    lacks it is a one-line :class:`PrunekitError`."""
    folder = Path(folder)
    what = f"model {shown or str(folder)!r}"
    ckpt = Checkpoint(folder)
    listed: dict[str, str] = {}
    if (folder / INDEX).is_file():
        try:
            listed = json.loads((folder / INDEX).read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
                raise PrunekitError("weight_map is not an object of file names")
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
            raise PrunekitError(f"{what}: {INDEX} is not a valid shard index ({_describe(err)})") from None
        names = sorted(set(listed.values()))
    elif (folder / SINGLE).is_file():
        names = [SINGLE]
    else:
        raise PrunekitError(f"{what} has no safetensors weights ({SINGLE} or {INDEX})")
    for name in names:
        path = folder / name
        if Path(name).name != name or name in (".", ".."):
            raise PrunekitError(f"{what}: {INDEX} names the shard {name!r}, which is not a file name in the folder")
        if not path.is_file():
            raise PrunekitError(f"{what}: the shard {name!r} listed in {INDEX} is missing; the download is "
                                "incomplete")
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    piece = f.get_slice(key)
                    ckpt.files[key] = name
                    ckpt.shapes[key] = tuple(piece.get_shape())
                    ckpt.dtypes[key] = piece.get_dtype()
        except (SafetensorError, OSError, ValueError) as err:
            raise PrunekitError(f"{what}: the shard {name!r} is truncated or not a safetensors file "
                                f"({_describe(err)})") from None
    for key, name in listed.items():
        if ckpt.files.get(key) != name:
            raise PrunekitError(f"{what}: {INDEX} places {key!r} in {name!r}, which does not hold it; the files "
                                "do not belong together")
    return ckpt


# ------------------------------------------------------------------ the model without weights


def empty_model(config, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The causal LM of ``config`` with every parameter on the meta device (tied weights tied)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.tie_weights()
    except Exception as err:  # noqa: BLE001 - whatever transformers raises, the in-memory loader may manage
        raise NotStreamable(f"transformers cannot build it without weights ({_describe(err)})") from None
    return model.eval()


def open_streamed(folder: str | Path, config, dtype: torch.dtype = torch.float32, shown: str | None = None
                  ) -> StreamedWeights:
    """The :class:`StreamedWeights` of the checkpoint in ``folder``: its headers checked
    (:func:`open_checkpoint`), the model of ``config`` built without weights, every tensor matched
    to its checkpoint key and shape. A bad checkpoint is a :class:`PrunekitError`; one that loads
    but not block by block (shapes other than the config's, such as per-layer widths, or weights
    that need converting) a :class:`NotStreamable`."""
    checkpoint = open_checkpoint(folder, shown)
    return StreamedWeights(empty_model(config, dtype), checkpoint, dtype, shown)


def _unique_tensors(model: nn.Module) -> dict[str, list[str]]:
    """Every tensor of ``model.state_dict()`` once, by its first name, with its other (tied) names."""
    names: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        names.setdefault(id(tensor), []).append(name)
    return {group[0]: group[1:] for group in names.values()}


def checkpoint_names(model: nn.Module, keys: Iterable[str], shown: str = "the model") -> dict[str, str]:
    """The model tensor each checkpoint key loads into, renamed as ``from_pretrained`` renames it
    (transformers 5: the model's conversion mapping, e.g. GPT-NeoX's ``embed_out`` -> ``lm_head``;
    then the base model's prefix added or dropped). A key that needs more than a renaming (a weight
    converter, e.g. fused experts) is a one-line error: such a model is pruned in memory."""
    meta = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "") or None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:  # transformers 4: no renaming but the prefix
        return {key: _with_prefix(key, prefix, meta) for key in keys}
    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if not isinstance(c, WeightRenaming)]
    names = {}
    for key in keys:
        name, converter = rename_source_key(key, renamings, converters, prefix, meta)
        if converter is not None:
            raise NotStreamable(f"the checkpoint tensor {key!r} needs transformers' weight conversion ({converter})")
        names[key] = name
    return names


def _with_prefix(key: str, prefix: str | None, meta: dict) -> str:
    if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in meta:
        return key[len(prefix) + 1:]
    if prefix and f"{prefix}.{key}" in meta:
        return f"{prefix}.{key}"
    return key


def is_meta(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "meta"


class StreamedWeights:
    """The weights of an :func:`empty_model`, put in place from a :class:`Checkpoint` one part at a time.

    ``sources`` maps every tensor of the model (tied duplicates once) to the checkpoint key it is read
    from (None: a buffer the model computed itself and the checkpoint lacks). A parameter the
    checkpoint lacks is a one-line error when this object is made, before any work."""

    def __init__(self, model: nn.Module, checkpoint: Checkpoint, dtype: torch.dtype = torch.float32,
                 shown: str | None = None):
        self.model, self.checkpoint, self.dtype = model, checkpoint, dtype
        self.tensors = dict(model.state_dict(keep_vars=True))
        what = f"model {shown or str(checkpoint.folder)!r}"
        loads_into = {name: key for key, name in checkpoint_names(model, checkpoint.files, what).items()}
        self.sources: dict[str, str | None] = {}
        missing = []
        for name, aliases in _unique_tensors(model).items():
            source = next((loads_into[n] for n in (name, *aliases) if n in loads_into), None)
            if source is None and is_meta(self.tensors[name]):
                missing.append(name)
            self.sources[name] = source
        wrong = [n for n, key in self.sources.items() if key is not None
                 and tuple(self.tensors[n].shape) != checkpoint.shapes[key]]
        if wrong:
            key = self.sources[wrong[0]]
            raise NotStreamable(f"its weights do not have the shapes config.json describes ({key!r} is "
                                f"{list(checkpoint.shapes[key])}, the config makes it {list(self.tensors[wrong[0]].shape)}; "
                                "per-layer widths?)")
        if missing:
            raise PrunekitError(f"the weights of model {shown or str(checkpoint.folder)!r} lack {len(missing)} "
                                f"tensor(s), e.g. {missing[0]!r}; the files are incomplete")
        self.read_s = 0.0

    def names_under(self, prefix: str) -> list[str]:
        """The model's tensors (first names) whose name starts with ``prefix`` (e.g. ``model.layers.3.``)."""
        return [n for n in self.sources if n.startswith(prefix)]

    def load(self, names: Iterable[str]) -> None:
        """Put the tensors ``names`` in place (on the CPU, in ``dtype`` when floating point)."""
        from accelerate.utils import set_module_tensor_to_device

        t0 = time.perf_counter()
        wanted = {self.sources[n]: n for n in names if self.sources[n] is not None}
        for key, tensor in self.checkpoint.read(wanted):
            set_module_tensor_to_device(self.model, wanted[key], "cpu", value=tensor, dtype=self.dtype)
        self.read_s += time.perf_counter() - t0

    def release(self, names: Iterable[str]) -> None:
        """Send the tensors ``names`` back to the meta device (their memory is freed)."""
        from accelerate.utils import set_module_tensor_to_device

        for name in names:
            if self.sources[name] is not None:
                set_module_tensor_to_device(self.model, name, "meta")

    @contextmanager
    def loaded(self, names: list[str]) -> Iterator[None]:
        """``names`` are in place inside the ``with`` block and freed after it, whatever happens."""
        self.load(names)
        try:
            yield
        finally:
            self.release(names)

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """The tensors ``names`` as stored in the input (in ``dtype`` when floating point), one at a time
        in the order given, without putting them into the model; a buffer the checkpoint lacks comes
        from the model."""
        names = list(names)
        stored = self.checkpoint.read(self.sources[n] for n in names if self.sources[n] is not None)
        for name in names:
            if self.sources[name] is None:
                yield name, self.tensor(name).detach()
                continue
            _, tensor = next(stored)
            yield name, tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def saved_name(self, name: str) -> str:
        """The key tensor ``name`` is saved under: the input's own key (so the output is named like the
        input, as ``save_pretrained`` names it), or the model's name for a buffer the input lacks."""
        return self.sources[name] or name

    def tensor(self, name: str) -> torch.Tensor:
        """The model's tensor ``name`` as it is now (a parameter or a buffer)."""
        owner, _, attr = name.rpartition(".")
        module = self.model.get_submodule(owner)
        return module._parameters[attr] if attr in module._parameters else module._buffers[attr]

    def output_bytes(self, name: str) -> int:
        """Bytes of tensor ``name`` once saved in ``dtype``."""
        tensor = self.tensors[name]
        element = tensor.element_size()
        if tensor.is_floating_point():
            element = torch.empty((), dtype=self.dtype).element_size()
        return tensor.numel() * element


class StreamedBlocks(BlockWeights):
    """The :class:`~prunekit.core.calibration.BlockWeights` of a streamed model: the tensors outside the
    blocks (but the output embeddings, which calibration never reaches) while the first block's
    inputs are captured, then each block for its turn. ``on_block(index, module)`` sees each block
    once it has run without error (the pruning pass writes it there); then the block is freed."""

    def __init__(self, weights: StreamedWeights, block_prefix: str, on_block=None):
        self.weights, self.prefix, self.on_block = weights, block_prefix, on_block
        model = weights.model
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        head_prefix = next((f"{n}." for n, m in model.named_modules() if head is not None and m is head), None)
        self.input_names = [n for n in weights.sources if not n.startswith(block_prefix + ".")
                            and not (head_prefix and n.startswith(head_prefix))]

    def block_names(self, index: int) -> list[str]:
        return self.weights.names_under(f"{self.prefix}.{index}.")

    @contextmanager
    def inputs(self) -> Iterator[None]:
        with self.weights.loaded(self.input_names):
            yield
        release_memory()

    @contextmanager
    def block(self, index: int, module: nn.Module) -> Iterator[None]:
        with self.weights.loaded(self.block_names(index)):
            yield
            if self.on_block is not None:
                self.on_block(index, module)
        release_memory()  # the block's activations and weights are gone: hand the free heap back


# ------------------------------------------------------------------ writing the output


class ShardWriter:
    """Writes a checkpoint as planned shards: ``plan[i]`` lists the tensor names of shard ``i``.

    One shard is ``model.safetensors``; more are ``model-0000i-of-0000n.safetensors`` with
    ``model.safetensors.index.json``, as transformers writes them. :meth:`write` takes one shard's
    tensors at a time, so memory holds one shard, never the model."""

    def __init__(self, folder: str | Path, plan: list[list[str]]):
        self.folder = Path(folder)
        n = len(plan)
        self.files = [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.plan = plan
        self.weight_map: dict[str, str] = {}
        self.total_size = 0
        self.write_s = 0.0

    def write(self, shard: int, tensors: dict[str, torch.Tensor]) -> None:
        if sorted(tensors) != sorted(self.plan[shard]):
            raise RuntimeError(f"shard {shard} expects {sorted(self.plan[shard])}, got {sorted(tensors)}")
        t0 = time.perf_counter()
        ordered = {name: tensors[name].detach().contiguous() for name in self.plan[shard]}
        save_file(ordered, str(self.folder / self.files[shard]), metadata={"format": "pt"})
        for name, tensor in ordered.items():
            self.weight_map[name] = self.files[shard]
            self.total_size += tensor.numel() * tensor.element_size()
        self.write_s += time.perf_counter() - t0

    def close(self) -> None:
        """Write the index (several shards); every shard must have been written."""
        written = set(self.weight_map.values())
        if written != set(self.files):
            raise RuntimeError(f"shards not written: {sorted(set(self.files) - written)}")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
            from prunekit.core.io import write_json

            write_json(self.folder / INDEX, index)


def pack(names: list[str], sizes: dict[str, int], limit: int) -> list[list[str]]:
    """``names`` in order, cut into groups of at most ``limit`` bytes (a larger tensor alone)."""
    groups: list[list[str]] = []
    used = 0
    for name in names:
        if groups and used + sizes[name] <= limit:
            groups[-1].append(name)
            used += sizes[name]
        else:
            groups.append([name])
            used = sizes[name]
    return groups
