"""Resolve a model name to weights and load it with stock transformers classes (no remote code).

Dtypes (``--dtype``): ``auto`` (the checkpoint's own, from its config's ``dtype``), ``bfloat16``,
``float16`` or ``float32``; the model is loaded, run and saved in that dtype (calibration
statistics and Hessians still accumulate in float32). Model types outside the family table are
checked before any weight is read: their skeleton is built without weights (accelerate's
``init_empty_weights``) and must have a recognisable block list
(:func:`prunekit.core.families.discover`).

Every way a model can fail to load (a name that is neither embedded, a folder nor a reachable hub
id; a garbage ``config.json``; a folder without weights; a truncated or garbage safetensors file;
a tampered ``prunekit.json``) is a one-line :class:`~prunekit.core.errors.PrunekitError`. So are
the inputs prunekit refuses (:mod:`prunekit.core.inputs`): an embedded model that is not prepared
yet (nothing is installed or converted on the way: the error says how), a folder whose weights are
only pickle files (unless ``trust_pickle_weights``), a symbolic link that leads out of the folder.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import torch

from prunekit.assets import EMBEDDED_MODELS, prepared_model_dir
from prunekit.core.errors import PrunekitError, unknown_choice
from prunekit.core.families import Family, check_model_type, discover
from prunekit.core.inputs import check_links, check_weight_files, from_pretrained_options

DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_DISCOVERED: dict[str, Family] = {}  # families found by discovery, by config
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def _describe(err: BaseException) -> str:
    from prunekit.core.io import describe_error

    return describe_error(err)


def resolve_model_path(name_or_path: str | Path) -> str:
    """Return a local folder or hub id for ``name_or_path``. An embedded name must be prepared already
    (a one-line error says how: nothing is installed or converted here); a folder's symbolic links
    must stay inside it (:func:`prunekit.core.inputs.check_links`)."""
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        folder = prepared_model_dir(name)
        check_links(folder, name)
        return str(folder)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PrunekitError(f"model path {name!r} is a file; give the model folder (config.json + weights)")
        if not (path / "config.json").is_file():
            raise PrunekitError(f"model folder {name!r} has no config.json")
        check_links(path, name)
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path:
        raise PrunekitError(f"model path {name!r} does not exist")
    return name  # a hub id such as "HuggingFaceTB/SmolLM2-135M"


def _unreachable(name: str, err: BaseException) -> PrunekitError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    close = difflib.get_close_matches(name.lower(), list(EMBEDDED_MODELS), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    why = "offline (HF_HUB_OFFLINE) and not in the Hugging Face cache" if offline else _describe(err)
    return PrunekitError(f"model {name!r} is not an embedded model, a local folder or a hub id that can be "
                         f"loaded: {why}{hint} (embedded: {', '.join(EMBEDDED_MODELS)})")


def check_dtype(dtype) -> str:
    """``dtype`` (a name such as ``bfloat16``/``bf16``, a ``torch.dtype`` or None = auto) as one of
    :data:`DTYPES`, else a one-line error."""
    if dtype is None:
        return "auto"
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else str(dtype).strip().lower()
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise unknown_choice("dtype", dtype, DTYPES)
    return name


def checkpoint_dtype(config) -> torch.dtype:
    """The dtype a checkpoint's config declares (``dtype``; a multimodal config's ``text_config``), or
    float32 when it declares none that prunekit computes in."""
    for cfg in (config, getattr(config, "text_config", None)):
        value = getattr(cfg, "dtype", None) if cfg is not None else None
        if isinstance(value, str):
            value = DTYPES.get(DTYPE_ALIASES.get(value, value))
        if value in DTYPES.values() and value is not None:
            return value
    return torch.float32


def resolve_dtype(dtype, config) -> torch.dtype:
    """The torch dtype ``dtype`` means for a model with this config (``auto``: the checkpoint's own)."""
    name = check_dtype(dtype)
    return checkpoint_dtype(config) if name == "auto" else DTYPES[name]


def skeleton(config, trust_remote_code: bool = False):
    """The model a config describes, built on the meta device: structure, no weights, no memory."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def check_family(config, trust_remote_code: bool = False) -> Family:
    """The family of a config: the table's, or for another model type the one :func:`discover` finds
    on the model's skeleton (built on the meta device, so before any weight is loaded)."""
    model_type = getattr(config, "model_type", None)
    family = check_model_type(model_type)
    if family is not None:
        return family
    try:
        key = json.dumps(config.to_dict(), sort_keys=True, default=str)
    except (TypeError, ValueError):
        key = None
    if key is not None and key in _DISCOVERED:  # one skeleton per config, however often it is checked
        return _DISCOVERED[key]
    try:
        model = skeleton(config, trust_remote_code)
    except Exception as err:  # noqa: BLE001 - any model transformers cannot build as a causal LM
        raise PrunekitError(f"model type {model_type!r} is not a causal language model transformers can build "
                            f"({_describe(err)})") from None
    family = discover(model)
    if key is not None:
        _DISCOVERED[key] = family
    return family


def load_config(name_or_path: str | Path, trust_remote_code: bool = False):
    """The transformers config of a model, checked to be a decoder prunekit can prune (fast: no weights)."""
    from transformers import AutoConfig


    name = str(name_or_path)
    path = resolve_model_path(name)
    try:
        config = _read_local_config(path, trust_remote_code) if Path(path).is_dir() else None
        config = config or AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except PrunekitError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to read a config is a bad model argument
        if not Path(path).is_dir():
            raise _unreachable(name, err) from None
        raise PrunekitError(f"model folder {name!r} has an unreadable config.json ({_describe(err)})") from None
    check_family(config, trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None)
    if isinstance(layers, int) and layers < 1:
        raise PrunekitError(f"model {name!r} has {layers} decoder layers (num_hidden_layers); there is nothing to prune")
    return config


def _read_local_config(path: str, trust_remote_code: bool):
    """The config of a local folder from one read of its ``config.json`` (a DeciLM layout as the Llama it
    describes); None where transformers must read it itself (remote code, an unknown model type)."""
    import json

    from transformers import CONFIG_MAPPING

    from prunekit.core.io import decilm_from_dict

    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    data = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("config.json does not hold a mapping")
    decilm = decilm_from_dict(data)[0]
    if decilm is not None:
        return decilm
    kind = data.get("model_type")
    if (trust_remote_code and "auto_map" in data) or not isinstance(kind, str) or kind not in CONFIG_MAPPING:
        return None
    config = CONFIG_MAPPING[kind].from_dict(data)
    config._name_or_path = path
    return config


def max_positions(config) -> int | None:
    """The longest sequence the model's position embeddings cover (``max_position_embeddings``)."""
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_seqlen(config, seqlen: int, flag: str = "--seqlen") -> None:
    """``seqlen`` must fit the model's positions."""
    limit = max_positions(config)
    if limit is not None and seqlen > limit:
        raise PrunekitError(f"{flag} {seqlen} is longer than the model's {limit} positions "
                            f"(max_position_embeddings); use at most {limit}")


def check_device(device) -> str | None:
    """``device`` as a string if it exists here (cpu, cuda, cuda:N, mps), else a one-line error."""
    if device is None:
        return None
    choices = "cpu, cuda, cuda:N, mps"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PrunekitError(f"unknown device {device!r} (choices: {choices})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PrunekitError(f"device {device!r}: no CUDA GPU is available here (torch {torch.__version__}); "
                                "use cpu or leave --device out")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise PrunekitError(f"device {device!r}: only {count} CUDA GPU(s) here (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise PrunekitError(f"device {device!r}: MPS is not available here; use cpu or leave --device out")
    elif dev.type != "cpu":
        raise PrunekitError(f"device {device!r} is not supported (choices: {choices})")
    return str(dev)


def check_weights(name_or_path: str | Path, trust_pickle_weights: bool = False) -> str:
    """The local folder or hub id of a model whose weights prunekit will read (safetensors, or pickle
    files with ``trust_pickle_weights``), checked before any work; a one-line error otherwise."""
    path = resolve_model_path(name_or_path)
    check_weight_files(path, str(name_or_path), trust_pickle_weights)
    check_weight_dtypes(path, str(name_or_path))
    return path


FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}  # safetensors' names of the dtypes prunekit prunes


def check_weight_dtypes(path: str, shown: str) -> None:
    """Every ``.weight`` tensor of a safetensors folder is floating point (read from the headers): an
    int8 or other integer weight is a quantized checkpoint without its scales, which the streamed path
    cannot build and the in-memory path would cast to float silently; both refuse it the same way."""
    from prunekit.core.shards import has_safetensors, open_checkpoint

    if not Path(path).is_dir() or not has_safetensors(path):
        return
    check_checkpoint_dtypes(open_checkpoint(path, shown), shown)


def check_checkpoint_dtypes(checkpoint, shown: str) -> None:
    """:func:`check_weight_dtypes` on headers already read (a :class:`~prunekit.core.shards.Checkpoint`)."""
    odd = sorted(n for n, d in checkpoint.dtypes.items() if n.endswith(".weight") and d not in FLOAT_DTYPES)
    if odd:
        raise PrunekitError(f"model {shown!r}: weight {odd[0]!r} has dtype {checkpoint.dtypes[odd[0]]}"
                            f"{f' (and {len(odd) - 1} more)' if len(odd) > 1 else ''}; prunekit prunes floating-point "
                            "checkpoints (dequantize a quantized one first)")


def load_model(name_or_path: str | Path, dtype: torch.dtype | str = "auto", device: str = "cpu",
               trust_remote_code: bool = False, trust_pickle_weights: bool = False):
    """Load a decoder-only causal LM in eval mode.

    ``name_or_path`` is an embedded name (``"smollm2-135m"``, ``"gemma3-270m"``, ...), a local folder
    or a hub id; ``dtype`` is ``"auto"`` (the checkpoint's own), ``"bfloat16"``, ``"float16"``,
    ``"float32"`` or a torch dtype. Folders written by prunekit's structured pruning with per-layer
    widths load too. Weights the files lack (which transformers would initialize at random) are an
    error. Only safetensors weights are read, unless ``trust_pickle_weights`` (the CLI's
    ``--trust-pickle-weights``) allows pickle files, read with ``torch.load(weights_only=True)``.
    """
    from transformers import AutoModelForCausalLM

    from prunekit.core.io import folder_kind, load_pretrained, read_manifest, size_mismatch_hint

    name = str(name_or_path)
    check_dtype(dtype)  # a bad dtype is an error before anything is read
    path = check_weights(name, trust_pickle_weights)
    dtype = resolve_dtype(dtype, load_config(name, trust_remote_code=trust_remote_code))
    if Path(path).is_dir():
        read_manifest(path)  # a tampered prunekit.json is an error before any weight is read
    try:
        if folder_kind(path) != "plain":  # per-layer widths or the DeciLM layout
            return load_pretrained(path, dtype=dtype, trust_pickle_weights=trust_pickle_weights).to(device)
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                           output_loading_info=True,
                                                           **from_pretrained_options(trust_pickle_weights))
    except PrunekitError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated/garbage weights surface as many error types
        hint = size_mismatch_hint(path, err)
        if hint is not None:
            raise hint from None
        raise PrunekitError(f"could not load the weights of model {name!r} ({_describe(err)})") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise PrunekitError(f"the weights of model {name!r} lack {len(missing)} tensor(s), e.g. {missing[0]!r}; "
                            "the files are incomplete")
    return model.to(device).eval()


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False, check_fits: bool = True,
                   config=None):
    """The model's tokenizer; with ``check_fits`` (default) one with more tokens than the model's
    embedding table has rows is refused (:func:`check_tokenizer_fits`). ``config``: the model's config
    when the caller has read it already (so config.json is not read again)."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    path = resolve_model_path(name)
    if config is None:
        try:  # a DeciLM folder: its config as transformers reads it (read as a generic config, the model
            # type transformers does not know and the export's rope_scaling key for older readers each warn)
            config = load_config(path, trust_remote_code) if Path(path).is_dir() else None
        except PrunekitError:
            config = None  # the tokenizer may still load; the model's own checks say what is wrong with it
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                  **({"config": config} if config is not None else {}))
    except Exception as err:  # noqa: BLE001 - missing or garbage tokenizer files
        if not Path(path).is_dir():
            raise _unreachable(name, err) from None
        raise PrunekitError(f"could not load the tokenizer of model {name!r} ({_describe(err)})") from None
    if check_fits:
        check_tokenizer_fits(tokenizer, name, config)
    return tokenizer


def check_tokenizer_fits(tokenizer, name: str, config=None) -> None:
    """The tokenizer's ids index the model's embedding table: a tokenizer with more tokens than the
    table has rows would fail mid-run (an IndexError in the embedding), so it is refused before work."""
    if config is None:
        try:
            config = load_config(name)
        except PrunekitError:
            return  # the model's own checks say what is wrong with it
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    rows = getattr(text, "vocab_size", None)
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise PrunekitError(f"the tokenizer of model {name!r} has {len(tokenizer):,} tokens but its embedding table "
                            f"has {rows:,} rows (vocab_size); give the tokenizer the model was trained with")
