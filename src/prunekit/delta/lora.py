"""LoRA deltas: a PEFT LoRA adapter read as a delta, pruned merged or as its factors.

A LoRA adapter (Hu et al. 2021) fine-tunes a linear layer W by a low-rank product: the layer computes
with ``W + s * B @ A``, A of shape (r x in), B of shape (out x r), ``s = lora_alpha / r`` (or
``lora_alpha / sqrt(r)`` with ``use_rslora``). The adapter is the folder PEFT writes:
``adapter_config.json`` and ``adapter_model.safetensors`` with tensors
``base_model.model.<module path>.lora_A.weight`` and ``....lora_B.weight`` (read with safetensors
only; a pickled ``adapter_model.bin`` is refused).

Two ways to prune it, both with the registered delta methods (:data:`DELTA_METHODS`):

* ``merged``: the delta of every adapted layer is ``D = s * B @ A``; the fine-tuned model
  ``W + D`` is materialised (:func:`merged_model`) and :func:`prunekit.delta.prune.prune_delta`
  prunes it like any fine-tuned model (every method, the merged or sparse outputs). The sparsity is
  that of ``D``, a dense (out x in) matrix: at p = 0.9 a tenth of its entries stay.
* ``factors``: the method prunes the entries of A and of B themselves (:func:`prune_factors`), each
  factor on its own at the same rate p: the sparsity is the fraction of the adapter's own entries
  (r x (in + out) per layer) set to zero. DARE's independent drops in A and B, each rescaled by
  1/(1-p), keep the expected product: E[B'A'] = E[B'] E[A'] = BA. The product B'A' is in general
  not sparse. Methods that read calibration statistics or the model's loss are refused here (their
  statistics are those of the merged layer, not of a factor): use ``merged`` for them. The output is
  an adapter folder of the same format (PEFT loads it), the pruned entries stored as zeros, or the
  merged model.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from prunekit.core.errors import PrunekitError, short_repr
from prunekit.core.finite import check_finite

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
FACTOR_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}
LORA_PRUNE = ("merged", "factors")
# adapter_config.json keys whose non-default values change what the adapter computes beyond W + s B A
UNSUPPORTED = {
    "use_dora": (False, None),  # DoRA: a learned magnitude vector rescales every column
    "lora_bias": (False, None),
    "modules_to_save": (None, []),  # whole modules trained and stored next to the adapter
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layer_replication": (None, []),
    "trainable_token_indices": (None, [], {}),
    "target_parameters": (None, []),
    "alora_invocation_tokens": (None, []),
    "use_qalora": (False, None),
}


@dataclass
class LoraAdapter:
    """A LoRA adapter in memory: its ``adapter_config.json`` and per adapted module (its path in the
    model) the factors A (r x in) and B (out x r) as float32, plus the dtype they were stored in."""

    config: dict
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    dtype: torch.dtype = torch.float32
    path: str = ""
    extra: dict = field(default_factory=dict)  # what else to say in an output's prunekit.json

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def alpha(self) -> float:
        return float(self.config["lora_alpha"])

    @property
    def scale(self) -> float:
        """``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with ``use_rslora`` (Kalajdzievski 2023)."""
        return self.alpha / (math.sqrt(self.rank) if self.config.get("use_rslora") else self.rank)

    def parameters(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.factors.values())

    def nonzero(self) -> int:
        return sum(int((a != 0).sum()) + int((b != 0).sum()) for a, b in self.factors.values())

    def delta(self, name: str) -> torch.Tensor:
        """``s * B @ A`` of module ``name``: its (out x in) delta, float32."""
        a, b = self.factors[name]
        return self.scale * (b @ a)

    def describe(self) -> dict:
        return {"adapter": self.path, "r": self.rank, "lora_alpha": self.alpha, "scale": self.scale,
                "use_rslora": bool(self.config.get("use_rslora")), "modules": len(self.factors),
                "parameters": self.parameters(), "nonzero": self.nonzero(), "dtype": str(self.dtype), **self.extra}


MAX_RANK = 65_536  # no adapter has more; a larger r is a damaged config
MAX_ALPHA = 1e6  # lora_alpha / r scales the delta: PEFT's usual alphas are 8..512; 1e308 made every weight inf


def _positive(config: dict, key: str, kind: type, where: str, maximum: float):
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or (
            kind is int and math.isfinite(value) and value != int(value)):
        raise PrunekitError(f"{where}: {key} must be a positive {kind.__name__}, got {short_repr(value)}")
    if not value <= maximum:  # inf too
        raise PrunekitError(f"{where}: {key} {short_repr(value)} is beyond the sane bound {maximum:g} (the delta is "
                            "lora_alpha / r times B@A); is the adapter config damaged?")
    return kind(value)


def check_config(config: object, where: str) -> dict:
    """The adapter config's checks that need no tensor: a LoRA adapter of the plain kind (W + s B A)."""
    if not isinstance(config, dict):
        raise PrunekitError(f"{where} must hold a JSON object, got {type(config).__name__}")
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise PrunekitError(f"{where}: peft_type {short_repr(peft_type)} is not a LoRA adapter (only LORA is read)")
    _positive(config, "r", int, where, MAX_RANK)
    _positive(config, "lora_alpha", float, where, MAX_ALPHA)
    bias = config.get("bias", "none")
    if bias != "none":
        raise PrunekitError(f"{where}: bias {short_repr(bias)} is not supported (the adapter trains biases; only "
                            "bias 'none' is a pure W + s B A delta)")
    for key, defaults in UNSUPPORTED.items():
        if key in config and config[key] not in defaults:
            raise PrunekitError(f"{where}: {key} {short_repr(config[key])} is not supported (only a plain LoRA "
                                "adapter, W + s B A per layer, is read)")
    for key in ("use_rslora", "fan_in_fan_out"):
        if not isinstance(config.get(key, False), bool):
            raise PrunekitError(f"{where}: {key} must be true or false, got {short_repr(config[key])}")
    targets = config.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise PrunekitError(f"{where}: target_modules must be a name, a regex or a list of names, got "
                            f"{short_repr(targets)}")
    return config


def read_adapter(path: str | Path) -> LoraAdapter:
    """Read a PEFT LoRA adapter folder (safetensors only); every problem is a one-line PrunekitError."""
    from safetensors import safe_open

    from prunekit.core.inputs import check_links
    from prunekit.core.io import describe_error, read_small_text

    shown = str(path)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise PrunekitError(f"LoRA adapter {shown!r} is not a folder (give the folder PEFT's save_pretrained wrote: "
                            f"{ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    check_links(folder, shown, "LoRA adapter")  # its files are copied into --format adapter outputs
    config_file, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_file.is_file():
        raise PrunekitError(f"LoRA adapter {shown!r} has no {ADAPTER_CONFIG}")
    if not weights.is_file():
        pickled = " (only safetensors is read; adapter_model.bin is a pickle)" if (
            folder / "adapter_model.bin").exists() else ""
        raise PrunekitError(f"LoRA adapter {shown!r} has no {ADAPTER_WEIGHTS}{pickled}")
    try:
        config = json.loads(read_small_text(config_file, "adapter config", 1_000_000))
    except ValueError as err:
        raise PrunekitError(f"{str(config_file)!r} is not valid JSON ({describe_error(err)})") from None
    check_config(config, str(config_file))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    dtypes = set()
    try:
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                suffix = next((s for s in FACTOR_SUFFIXES if key.endswith(s)), None)
                if not key.startswith(PREFIX) or suffix is None:
                    raise PrunekitError(f"{str(weights)!r}: tensor {key!r} is not a LoRA factor "
                                        f"({PREFIX}<module>.lora_A.weight / .lora_B.weight); embedding LoRA, DoRA "
                                        "magnitudes and trained biases are not supported")
                tensor = f.get_tensor(key)
                dtypes.add(tensor.dtype)
                parts.setdefault(key[len(PREFIX):-len(suffix)], {})[FACTOR_SUFFIXES[suffix]] = tensor
    except PrunekitError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged file is one line, whatever safetensors raises
        raise PrunekitError(f"cannot read {str(weights)!r} ({describe_error(err, 160)})") from None
    if not parts:
        raise PrunekitError(f"{str(weights)!r} holds no LoRA factors")
    factors, r = {}, int(config["r"])
    for name, pair in sorted(parts.items()):
        missing = {"A", "B"} - set(pair)
        if missing:
            raise PrunekitError(f"{str(weights)!r}: module {name!r} has no lora_{missing.pop()}.weight")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise PrunekitError(f"{str(weights)!r}: module {name!r} has lora_A {list(a.shape)} and lora_B "
                                f"{list(b.shape)}; rank r = {r} needs A (r x in) and B (out x r)")
        if not (a.is_floating_point() and b.is_floating_point()):
            raise PrunekitError(f"{str(weights)!r}: module {name!r} has factors of dtype {a.dtype}/{b.dtype}")
        for label, factor in (("lora_A", a), ("lora_B", b)):
            check_finite(factor, f"{str(weights)!r}: module {name!r} {label}")
        factors[name] = (a.float(), b.float())
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    return LoraAdapter(config, factors, dtype, str(folder))


def check_adapter(adapter: LoraAdapter, model: nn.Module) -> None:
    """Every adapted module is a linear layer of ``model`` whose (out x in) weight fits B @ A."""
    from prunekit.core.families import is_linear, weight_view

    where = adapter.path or "the LoRA adapter"
    for name, (a, b) in adapter.factors.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise PrunekitError(f"{where}: module {name!r} is not in the base model ({type(model).__name__}); the "
                                "adapter was trained on another model") from None
        if not is_linear(module):
            raise PrunekitError(f"{where}: module {name!r} is a {type(module).__name__}, not a linear layer (only "
                                "LoRA on linear layers is supported)")
        shape = tuple(weight_view(module).shape)
        if shape != (b.shape[0], a.shape[1]):
            raise PrunekitError(f"{where}: module {name!r} has lora_B @ lora_A of shape {[b.shape[0], a.shape[1]]} but "
                                f"the base layer's weight is {list(shape)} (out x in); the adapter was trained on "
                                "another model")


@torch.no_grad()
def merge_adapter(model: nn.Module, adapter: LoraAdapter) -> list[str]:
    """Add ``s * B @ A`` to every adapted layer of ``model`` in place (after :func:`check_adapter`)."""
    from prunekit.core.families import weight_view

    check_adapter(adapter, model)
    where = adapter.path or "the LoRA adapter"
    for name in adapter.factors:
        weight = weight_view(model.get_submodule(name))
        delta = adapter.delta(name)
        check_finite(delta, f"{where}: the delta s*B@A of module {name!r}", f"s = {adapter.scale:g} times B@A "
                     "overflows float32")
        weight.copy_((weight.float() + delta).to(weight.dtype))
        check_finite(weight, f"{where}: the merged weights of module {name!r}", f"base + delta overflows {weight.dtype}")
    return list(adapter.factors)


def merged_model(base: nn.Module, adapter: LoraAdapter) -> nn.Module:
    """A copy of ``base`` with the adapter merged: the fine-tuned model ``W + s * B @ A``."""
    model = copy.deepcopy(base)
    merge_adapter(model, adapter)
    return model


@torch.no_grad()
def prune_factors(adapter: LoraAdapter, step, model: nn.Module):
    """Prune the entries of every factor A and B with ``step``'s method at its rate; returns
    ``(pruned adapter, DeltaResult)`` (one report row per factor, named ``<module>.lora_A`` / ``.lora_B``).

    ``step.targets`` / ``step.ignore`` select modules of ``model`` (the base model the adapter belongs
    to) as everywhere; unselected modules keep their factors."""
    import time

    from prunekit.core.layerwise import layer_generator
    from prunekit.core.targets import select_layers
    from prunekit.delta.base import DeltaContext, DeltaLayerReport, DeltaResult
    from prunekit.delta.step import check_factor_method

    check_factor_method(step)
    method = step.build()
    start = time.perf_counter()
    check_adapter(adapter, model)
    selected = select_layers({n: model.get_submodule(n) for n in adapter.factors}, step.targets, step.ignore)
    if not selected:
        raise PrunekitError(f"targets {step.targets} minus ignore {step.ignore} match none of the adapter's "
                            f"{len(adapter.factors)} modules")
    result = DeltaResult(step.method, step.sparsity)
    factors = {}
    for name, (a, b) in adapter.factors.items():
        if name not in selected:
            factors[name] = (a, b)
            continue
        pruned = []
        for label, tensor in (("lora_A", a), ("lora_B", b)):
            key = f"{name}.{label}"
            ctx = DeltaContext(key, None, layer_generator(step.seed, key))
            new = method.prune(tensor, step.sparsity, ctx)
            check_finite(new, f"the pruned factor {key!r}", "the rescaled entries overflow float32; lower the sparsity")
            pruned.append(new)
            result.layers.append(DeltaLayerReport(key, tuple(tensor.shape), int((tensor != 0).sum()),
                                                  int((new != 0).sum()), ctx.factor))
        factors[name] = tuple(pruned)
    result.seconds = time.perf_counter() - start
    return LoraAdapter(dict(adapter.config), factors, adapter.dtype, adapter.path), result


def adapter_tensors(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """The safetensors of an adapter, in PEFT's key names and the adapter's dtype."""
    tensors = {}
    for name, (a, b) in adapter.factors.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.to(adapter.dtype).contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.to(adapter.dtype).contiguous()
    return tensors


def write_adapter_files(folder: str | Path, adapter: LoraAdapter) -> None:
    """``adapter_config.json`` + ``adapter_model.safetensors`` into an existing (temporary) folder."""
    from safetensors.torch import save_file

    from prunekit.core.io import write_json

    folder = Path(folder)
    save_file(adapter_tensors(adapter), str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    write_json(folder / ADAPTER_CONFIG, adapter.config)


def save_adapter(adapter: LoraAdapter, out: str | Path, overwrite: bool = False, manifest: dict | None = None,
                 inputs: tuple = (), source: str | None = None) -> Path:
    """Write the adapter folder atomically (the ``--out`` rules of :func:`prunekit.core.io.check_output`),
    with a ``prunekit.json`` manifest beside PEFT's two files."""
    from prunekit.core.io import atomic_output, write_manifest

    with atomic_output(out, overwrite, inputs=inputs) as tmp:
        write_adapter_files(tmp, adapter)
        write_manifest(tmp, manifest, source)
    return Path(out).expanduser().resolve()
