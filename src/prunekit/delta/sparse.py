"""The sparse delta file: the pruned delta as indices and values, tied to its base by a fingerprint.

One safetensors file (reading it never runs code). For every tensor where the merged model differs
from the base: ``<name>.indices`` (flat positions, int32, or int64 for tensors of 2^31 entries or more)
and ``<name>.values`` (the delta at those positions, float32); the header metadata holds the format
name, every such tensor's shape, the base's fingerprint (sha256 over the names, dtypes, shapes and bytes
of its state dict) and the recipe that made the delta. ``apply_sparse_delta(base, file)`` refuses a base
whose fingerprint differs, then adds the values in place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from prunekit.core.errors import PrunekitError, short_repr
from prunekit.core.finite import check_finite

FORMAT = "prunekit-sparse-delta/1"
META_KEY = "prunekit_delta"


def fingerprint(model: nn.Module) -> str:
    """sha256 of a model's state dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the second name of a shared tensor (a tied output head)."""
    seen, state = set(), {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.stride())
        if key not in seen:
            seen.add(key)
            state[name] = tensor
    return state


def sparse_delta(base: nn.Module, merged: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """(safetensors tensors, shapes) of ``merged - base`` at the positions where the two differ."""
    tensors, shapes = {}, {}
    merged_state = merged.state_dict()
    for name, b in unique_state(base).items():
        m = merged_state[name]
        if torch.equal(b, m):
            continue
        delta = (m.float() - b.float()).reshape(-1)
        index = (m.reshape(-1) != b.reshape(-1)).nonzero().reshape(-1)
        dtype = torch.int32 if b.numel() < 2**31 else torch.int64
        tensors[f"{name}.indices"] = index.to(dtype).contiguous()
        tensors[f"{name}.values"] = delta[index].contiguous()
        check_finite(tensors[f"{name}.values"], f"the delta of tensor {name!r}",
                     "the fine-tuned model and its base must have finite weights")
        shapes[name] = list(b.shape)
    return tensors, shapes


def _not_a_delta(path: Path) -> str | None:
    """Why the existing file ``path`` is not a sparse delta prunekit wrote (None when it is)."""
    return None if read_header(path, quiet=True) is not None else "is not a sparse delta prunekit wrote"


def check_delta_file_out(out: str | Path, overwrite: bool, inputs: tuple = ()) -> Path:
    """``--out`` of a sparse delta: a ``.safetensors`` file path, new unless ``overwrite`` and it is a
    sparse delta prunekit wrote (the rules of :func:`prunekit.core.io.check_output`)."""
    from prunekit.core.io import check_output

    if Path(out).suffix != ".safetensors":
        raise PrunekitError(f"--out {str(out)!r}: a sparse delta is one file ending in .safetensors")
    return check_output(out, overwrite, inputs, owned=_not_a_delta)


def save_sparse_delta(path: str | Path, base: nn.Module, merged: nn.Module, manifest: dict | None = None,
                      overwrite: bool = False, inputs: tuple = ()) -> Path:
    """Write the sparse delta of ``merged`` against ``base`` to ``path`` through the one writer
    (:func:`prunekit.core.io.atomic_file`: the ``--out`` rules hold again at the move)."""
    from safetensors.torch import save_file

    from prunekit import __version__
    from prunekit.core.io import atomic_file

    check_delta_file_out(path, overwrite, inputs)
    tensors, shapes = sparse_delta(base, merged)
    meta = {"format": FORMAT, "prunekit_version": __version__, "base_sha256": fingerprint(base), "shapes": shapes,
            **(manifest or {})}
    with atomic_file(path, _not_a_delta, overwrite, inputs=inputs) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", META_KEY: json.dumps(meta, default=str)})
    return Path(path).expanduser().resolve()


def read_header(path: str | Path, quiet: bool = False) -> dict | None:
    """The metadata of a sparse delta file; anything else is a one-line error (None with ``quiet``)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("shapes"), dict):
            raise PrunekitError(f"format {short_repr(meta.get('format') if isinstance(meta, dict) else meta)}")
    except Exception as err:  # noqa: BLE001 - whatever is wrong with the file, the answer is one line
        if quiet:
            return None
        raise PrunekitError(f"{str(path)!r} is not a prunekit sparse delta ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:100] if str(err) else ''})") from None
    return meta


@torch.no_grad()
def apply_sparse_delta(base: nn.Module, path: str | Path) -> dict:
    """Add the sparse delta in ``path`` to ``base`` in place (its fingerprint must match); returns the header."""
    from safetensors import safe_open

    meta = read_header(path)
    if not Path(path).is_file():
        raise PrunekitError(f"sparse delta {str(path)!r} does not exist")
    found = fingerprint(base)
    if found != meta.get("base_sha256"):
        raise PrunekitError(f"the sparse delta {str(path)!r} was made against another base (base sha256 "
                            f"{str(meta.get('base_sha256'))[:12]}..., this model {found[:12]}...); apply it to the "
                            "model it was made from")
    state = unique_state(base)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for name, shape in meta["shapes"].items():
            if name not in state or list(state[name].shape) != shape or {f"{name}.indices", f"{name}.values"} - keys:
                raise PrunekitError(f"the sparse delta {str(path)!r} does not fit tensor {name!r}")
            flat = state[name].view(-1)
            index, values = read_entries(f, name, flat.numel(), str(path))
            flat[index] = (flat[index].float() + values.float()).to(flat.dtype)
            check_finite(flat[index], f"tensor {name!r} after adding the sparse delta {str(path)!r}",
                         f"base + delta overflows {flat.dtype}")
    return meta


def read_entries(f, name: str, numel: int, shown: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices as int64, values)`` of tensor ``name`` in an open sparse delta, checked: 1-D integer
    indices, strictly increasing (each position once, as :func:`sparse_delta` writes them) and inside
    the tensor's ``numel`` entries; as many finite floating-point values. Anything else would be applied
    silently wrong (a repeated index: the last write wins; a float or bool index: truncated or read as 0/1)."""
    index, values = f.get_tensor(f"{name}.indices"), f.get_tensor(f"{name}.values")

    def bad(tensor: str, why: str) -> PrunekitError:
        return PrunekitError(f"the sparse delta {shown!r}: tensor {tensor!r} {why}")

    if index.dtype not in (torch.int32, torch.int64):
        raise bad(f"{name}.indices", f"has dtype {str(index.dtype).removeprefix('torch.')}; indices are int32 or int64")
    if index.dim() != 1:
        raise bad(f"{name}.indices", f"has shape {list(index.shape)}; indices are one flat (1-D) list of positions")
    if not values.is_floating_point() or values.dim() != 1:
        raise bad(f"{name}.values", f"has dtype {str(values.dtype).removeprefix('torch.')} and shape "
                  f"{list(values.shape)}; values are one flat (1-D) list of floats")
    if len(index) != len(values):
        raise bad(f"{name}.indices", f"holds {len(index)} positions but {name}.values {len(values)} values")
    index = index.long()
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= numel):
        raise bad(f"{name}.indices", f"holds positions {int(index.min())}..{int(index.max())}; the tensor has "
                  f"{numel} entries (0..{numel - 1})")
    if len(index) > 1 and not bool((index[1:] > index[:-1]).all()):
        raise bad(f"{name}.indices", "is not strictly increasing (a repeated or out-of-order position)")
    check_finite(values, f"the sparse delta {shown!r}: tensor {name + '.values'!r}")
    return index, values
