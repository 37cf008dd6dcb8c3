"""Making a physically pruned model saveable and reloadable, with its widths in ``config.json``.

After pruning, :func:`describe_in_config` makes the config describe the model wherever it can:

* the number of blocks always;
* widths and head counts that are the same in every block (``intermediate_size``,
  ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``; names from the family table);
* biases that bias compensation added, through the architecture's own bias flags (Llama's
  ``attention_bias`` / ``mlp_bias``, Qwen3's and GPT-NeoX's ``attention_bias``, OPT's
  ``enable_bias``), the sibling projections getting zero biases.

If then the stock transformers class builds exactly this model, the folder is a plain one:
``AutoModelForCausalLM.from_pretrained`` loads it, nothing else is recorded. Otherwise (widths
that differ per block, heads of OPT/GPT-2/GPT-NeoX whose head size is derived from
``hidden / heads``, added biases the family has no flag for) the config keeps the widths of the
model before pruning, so that a plain ``from_pretrained`` always meets a size mismatch and refuses
the folder instead of loading it wrong, and every linear layer that differs is recorded in the
config itself, as the extra attribute :data:`CONFIG_KEY`::

    "prunekit_layer_shapes": {"linears": {"model.layers.3.mlp.down_proj": [out, in, has_bias], ...},
                              "heads": {"model.layers.3.self_attn": n_query_heads, ...}}

Extra config attributes survive ``save_pretrained`` / ``from_pretrained``, so a folder re-saved by
``save_pretrained`` (a Trainer checkpoint, a PEFT merge, ``push_to_hub``) still carries its widths.
:func:`apply_layer_shapes` rebuilds exactly those modules on a model built from the config with the
stock classes (no remote code) before the weights are loaded (``prunekit.load_pretrained``).
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.families import Adapter, adapter_for, new_linear, weight_view

CONFIG_KEY = "prunekit_layer_shapes"  # the config attribute holding the per-layer shapes
BIAS_KEYS = ("attention_bias", "mlp_bias", "enable_bias")  # config flags that give whole layouts biases
_ABSENT = object()
LOAD_HINT = ("per-layer widths (config.json: prunekit_layer_shapes): load it with prunekit.load_pretrained(path) "
             "or prunekit.load_model(path); plain from_pretrained refuses it (size mismatch)")


def _widths_config(adapter: Adapter):
    """The (sub-)config holding the widths and head counts of the blocks (a multimodal model's text config)."""
    return adapter.family.widths_config(adapter.model.config)


def _width_keys(adapter: Adapter) -> tuple[str, ...]:
    attention = adapter.family.attention
    keys = (adapter.family.mlp.width_key, attention.heads_key, attention.kv_heads_key, attention.head_dim_key)
    return tuple(k for k in keys if k is not None)


def rewrite_config(adapter: Adapter) -> bool:
    """Write the widths that are the same in every block into the config (names from the family table);
    True when every block has the same MLP width and the same attention head counts."""
    cfg = _widths_config(adapter)
    mlp, attention = adapter.family.mlp, adapter.family.attention
    n = len(adapter.blocks)
    cfg.num_hidden_layers = n
    if getattr(cfg, "layer_types", None) is not None and len(cfg.layer_types) != n:
        raise RuntimeError("layer_types must be trimmed when blocks are removed")
    widths = {adapter.mlp_width(i) for i in range(n)}
    counts = {adapter.attention_counts(i) for i in range(n)}
    uniform = len(widths) == 1 and len(counts) == 1
    if len(widths) == 1:
        setattr(cfg, mlp.width_key, widths.pop())
    if len(counts) == 1 and attention.head_dim_key is not None:  # else head_dim is hidden / heads
        n_q, n_kv, head_dim = counts.pop()
        setattr(cfg, attention.heads_key, n_q)
        if attention.kv_heads_key is not None:
            setattr(cfg, attention.kv_heads_key, n_kv)
        setattr(cfg, attention.head_dim_key, head_dim)
    return uniform


def _reference(config) -> nn.Module:
    """The model the stock transformers class builds from ``config`` (on the meta device: no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _block_linears(adapter: Adapter) -> dict[str, nn.Module]:
    return {name: m for i in range(len(adapter.blocks)) for name, m in adapter.linears(i).items()}


def layer_shapes(model: nn.Module) -> dict:
    """The block linears (and attention head counts) that differ from what the config builds; {} if none."""
    adapter = adapter_for(model)
    ref = adapter_for(_reference(model.config))
    changed, heads = {}, {}
    for i in range(len(adapter.blocks)):
        reference = ref.linears(i)
        for name, module in adapter.linears(i).items():
            other = reference[name]
            if module.weight.shape != other.weight.shape or (module.bias is None) != (other.bias is None):
                out, inp = weight_view(module).shape
                changed[name] = [out, inp, module.bias is not None]
        if adapter.attention_counts(i) != ref.attention_counts(i):
            heads[f"{adapter.block_prefix}.{i}.{adapter.family.attention.path}"] = adapter.attention_counts(i)[0]
    return {"linears": changed, "heads": heads} if changed or heads else {}


def use_bias_flags(adapter: Adapter) -> list[nn.Module]:
    """Turn on the config's bias flags that give the stock class every bias the model has.

    Bias compensation adds biases to ``o_proj`` / ``down_proj``; a flag such as Llama's
    ``attention_bias`` or ``mlp_bias`` makes the stock class build a bias on every projection of
    that part, so the other projections get zero biases (their outputs do not change). Which
    linears a flag gives biases is found by building the model with it on (meta device), not
    from a list. Nothing changes unless flags cover every added bias; returns the modules that
    got a zero bias (empty when nothing changed)."""
    cfg = _widths_config(adapter)
    linears = _block_linears(adapter)
    plain = _block_linears(adapter_for(_reference(adapter.model.config)))
    if any(plain[name].weight.shape != m.weight.shape for name, m in linears.items()):
        return []  # the widths differ from the config: flags cannot make it describe the model
    needed = {name for name, m in linears.items() if m.bias is not None and plain[name].bias is None}
    if not needed:
        return []
    chosen, covered = [], set()
    for key in BIAS_KEYS:
        if getattr(cfg, key, None) is not False:
            continue
        setattr(cfg, key, True)
        try:
            gains = {name for name, m in _block_linears(adapter_for(_reference(adapter.model.config))).items()
                     if m.bias is not None and plain[name].bias is None}
        finally:
            setattr(cfg, key, False)
        if gains & needed:
            chosen.append(key)
            covered |= gains
    if not needed <= covered:
        return []
    for key in chosen:
        setattr(cfg, key, True)
    zeroed = []
    with torch.no_grad():
        for name in sorted(covered):
            module = linears[name]
            if module.bias is None:
                out = weight_view(module).shape[0]
                module.bias = nn.Parameter(torch.zeros(out, dtype=module.weight.dtype, device=module.weight.device))
                zeroed.append(module)
    return zeroed


def describe_in_config(model: nn.Module) -> dict:
    """Make ``model.config`` describe the pruned ``model``, or record what it cannot (module docstring).

    Returns the recorded shapes ({} when the stock class builds the model from the config alone),
    which are also set as ``config.prunekit_layer_shapes`` (and removed from it when empty)."""
    adapter = adapter_for(model)
    cfg = _widths_config(adapter)
    keys = (*_width_keys(adapter), *BIAS_KEYS)
    before = {k: getattr(cfg, k, _ABSENT) for k in keys}
    uniform = rewrite_config(adapter)
    zeroed = use_bias_flags(adapter) if uniform else []  # flags cannot describe per-layer widths
    shapes = layer_shapes(model)
    if shapes:  # per-layer: keep the widths of the model before pruning, record every linear that differs
        for k, value in before.items():
            if value is not _ABSENT:
                setattr(cfg, k, value)
            elif hasattr(cfg, k):
                delattr(cfg, k)
        for module in zeroed:
            module.bias = None
        shapes = layer_shapes(model)
    set_config_shapes(model.config, shapes)
    return shapes


def set_config_shapes(config, shapes: dict) -> None:
    """``config.prunekit_layer_shapes = shapes``, or no such attribute when ``shapes`` is empty."""
    if shapes:
        setattr(config, CONFIG_KEY, shapes)
    elif hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)


def apply_layer_shapes(model: nn.Module, shapes: dict) -> None:
    """Replace the recorded linears by modules of the recorded shapes and set the head counts."""
    adapter = adapter_for(model)
    for name, (out, inp, bias) in shapes.get("linears", {}).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, new_linear(getattr(parent, child), out, inp, bias))
    for name, n_heads in shapes.get("heads", {}).items():
        i = int(name[len(adapter.block_prefix) + 1 :].split(".")[0])
        head_dim = adapter.attention_counts(i)[2]
        adapter.family.set_head_count(model.get_submodule(name), n_heads, head_dim)


def bias_flag(model: nn.Module, name: str) -> str | None:
    """The config flag (one of :data:`BIAS_KEYS`) that makes the stock class give linear ``name`` a
    bias, or None when no flag does (found by building the model with the flag on, meta device)."""
    cfg = _widths_config(adapter_for(model))
    for key in BIAS_KEYS:
        if getattr(cfg, key, None) is not False:
            continue
        setattr(cfg, key, True)
        try:
            if _reference(model.config).get_submodule(name).bias is not None:
                return key
        finally:
            setattr(cfg, key, False)
    return None


# ------------------------------------------------------------------ the DeciLM / Nemotron-NAS layout
# Llama models whose blocks differ, as NVIDIA's Nemotron-NAS checkpoints (Llama-3.1-Nemotron-51B,
# -Super-49B, -Ultra-253B) describe them, and as vLLM (model_executor/models/nemotron_nas.py) and
# llama.cpp (convert_hf_to_gguf.py, DeciModel) read them: ``model_type`` "nemotron-nas",
# ``architectures`` ["DeciLMForCausalLM"], one global query-head count (``num_attention_heads``) and
# one entry of ``block_configs`` per block:
#   {"attention": {"n_heads_in_group": g, "no_op": false, "replace_with_linear": false, ...},
#    "ffn": {"ffn_mult": m, "no_op": false, "replace_with_linear": false, ...}}
# The block has num_attention_heads / g key/value heads and an MLP of
# ceil_256(int(2 * m * hidden_size / 3)) channels (the published ``_ffn_mult_to_intermediate_size``).

DECILM_TYPE = "nemotron-nas"
DECILM_ARCHITECTURE = "DeciLMForCausalLM"
DECILM_ATTENTION_KEYS = ("no_op", "replace_with_linear", "sparsify", "n_heads_in_group", "window_length",
                         "num_sink_tokens", "use_prefill_window_in_sink_attention", "unshifted_sink")
DECILM_FFN_KEYS = ("no_op", "replace_with_linear", "sparsify", "ffn_mult")
DECILM_FFN_MULTIPLE = 256


def decilm_ffn_width(ffn_mult: float, hidden_size: int) -> int:
    """MLP channels of a DeciLM block: ``int(2 * ffn_mult * hidden / 3)`` rounded up to a multiple of 256."""
    width = int(2 * ffn_mult * hidden_size / 3)
    return -(-width // DECILM_FFN_MULTIPLE) * DECILM_FFN_MULTIPLE


def decilm_ffn_mult(width: int, hidden_size: int) -> float:
    """The ``ffn_mult`` (6 decimals, as the published config rounds it) that gives ``width`` channels;
    ``width`` must be a multiple of 256."""
    mult = round(1.5 * width / hidden_size, 6)
    if decilm_ffn_width(mult, hidden_size) != width:
        raise PrunekitError(f"no ffn_mult gives {width} channels at hidden size {hidden_size}")
    return mult


def _decilm_error(what: str) -> PrunekitError:
    return PrunekitError(f"DeciLM config: {what}")


def decilm_block_widths(config: dict) -> list[tuple[int, int]]:
    """(key/value heads, MLP channels) of every block of a DeciLM ``config.json``, checked against the
    published schema; blocks prunekit cannot rebuild (attention or MLP removed or replaced by a
    linear layer, sliding-window or sink attention) are one-line errors."""
    blocks = config.get("block_configs")
    n_heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
    if not isinstance(blocks, list) or len(blocks) != config.get("num_hidden_layers"):
        raise _decilm_error("block_configs must be a list with one entry per block (num_hidden_layers)")
    if not isinstance(n_heads, int) or not isinstance(hidden, int):
        raise _decilm_error("num_attention_heads and hidden_size must be integers")
    widths = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or not isinstance(block.get("attention"), dict) \
                or not isinstance(block.get("ffn"), dict):
            raise _decilm_error(f"block_configs[{i}] must hold an attention and an ffn object")
        attention, ffn = block["attention"], block["ffn"]
        for part, keys in ((attention, DECILM_ATTENTION_KEYS), (ffn, DECILM_FFN_KEYS)):
            unknown = sorted(set(part) - set(keys))
            if unknown:
                raise _decilm_error(f"block_configs[{i}] has keys the published schema lacks: {unknown}")
            if part.get("no_op") or part.get("replace_with_linear"):
                raise _decilm_error(f"block_configs[{i}] removes or replaces a sub-block (no_op / "
                                    "replace_with_linear), which prunekit's reader does not rebuild")
        if attention.get("window_length") is not None or attention.get("num_sink_tokens") is not None:
            raise _decilm_error(f"block_configs[{i}] uses window or sink attention, which prunekit's reader does "
                                "not rebuild")
        group, mult = attention.get("n_heads_in_group"), ffn.get("ffn_mult")
        if not isinstance(group, int) or group < 1 or n_heads % group:
            raise _decilm_error(f"block_configs[{i}].attention.n_heads_in_group must divide num_attention_heads "
                                f"{n_heads}, got {group!r}")
        if not isinstance(mult, (int, float)) or isinstance(mult, bool) or mult <= 0:
            raise _decilm_error(f"block_configs[{i}].ffn.ffn_mult must be a positive number, got {mult!r}")
        widths.append((n_heads // group, decilm_ffn_width(mult, hidden)))
    return widths


def decilm_to_llama(config: dict) -> tuple[dict, dict]:
    """A Llama config (dict) and the per-layer shapes that together describe a DeciLM ``config``:
    the config states block 0's widths; the blocks that differ are listed in the shapes."""
    widths = decilm_block_widths(config)
    llama = {k: v for k, v in config.items() if k not in ("block_configs", "auto_map")}
    hidden, n_heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // n_heads
    llama.update(model_type="llama", architectures=["LlamaForCausalLM"], head_dim=head_dim,
                 num_key_value_heads=widths[0][0], intermediate_size=widths[0][1])
    attention_bias, mlp_bias = bool(config.get("attention_bias")), bool(config.get("mlp_bias"))
    linears = {}
    for i, (n_kv, width) in enumerate(widths):
        prefix = f"model.layers.{i}."
        if n_kv != widths[0][0]:
            for name in ("k_proj", "v_proj"):
                linears[f"{prefix}self_attn.{name}"] = [n_kv * head_dim, hidden, attention_bias]
        if width != widths[0][1]:
            linears[f"{prefix}mlp.gate_proj"] = [width, hidden, mlp_bias]
            linears[f"{prefix}mlp.up_proj"] = [width, hidden, mlp_bias]
            linears[f"{prefix}mlp.down_proj"] = [hidden, width, mlp_bias]
    return llama, ({"linears": linears, "heads": {}} if linears else {})
