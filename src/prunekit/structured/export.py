"""``prunekit export --format decilm``: a per-layer-width Llama in the DeciLM / Nemotron-NAS layout.

Serving engines read Llama models whose blocks differ in this layout (NVIDIA's Nemotron-NAS
checkpoints; vLLM's ``nemotron_nas.py``, llama.cpp's ``DeciModel`` converter): ``config.json`` with
``model_type`` "nemotron-nas" and one ``block_configs`` entry per block, weights under the Llama
names. The layout states per block

* the MLP width as ``ffn_mult``: ``ceil_256(int(2 * ffn_mult * hidden / 3))`` channels, so widths
  are multiples of 256;
* the attention as kept (with ``n_heads_in_group`` query heads per key/value head) or removed;
  the number of query heads is one for the whole model (``num_attention_heads``).

prunekit's widths are multiples of ``round_to`` and its head pruning removes whole kv groups
(query heads included), so the export pads: MLP channels up to the next multiple of 256 and every
block's heads back to the model's query-head count, with zero weights (a zero channel or a head
with zero key, value and output weights adds exactly nothing). The logits are unchanged; the
padded compute stays. Biases (bias compensation) become the global ``attention_bias`` /
``mlp_bias`` flags, the other projections getting zero biases.

The layout is the published one (checked in ``tests/test_structured_export.py`` against the fields
and rules of NVIDIA's ``block_config.py`` and vLLM's reader); the folder was not run in vLLM or
llama.cpp here. :func:`prunekit.load_pretrained` reads it back as the Llama model it describes.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.core.jsonout import dumps_json
from prunekit.core.inputs import add_trust_pickle_arg
from prunekit.core.families import adapter_for, set_weight, weight_view
from prunekit.core.shapes import (CONFIG_KEY, DECILM_ARCHITECTURE, DECILM_FFN_MULTIPLE, DECILM_TYPE,
                                  decilm_block_widths, decilm_ffn_mult)

FORMATS = ("decilm",)


@dataclass
class ExportResult:
    """What the export wrote, and what it had to pad."""

    format: str
    blocks: int
    query_heads: int  # num_attention_heads of the exported model
    kv_heads: list[int] = field(default_factory=list)  # per block, after padding
    mlp_widths: list[int] = field(default_factory=list)  # per block, after padding
    padded_heads: int = 0  # zero query heads added, all blocks
    padded_channels: int = 0  # zero MLP channels added, all blocks
    parameters: int = 0  # of the exported model (padding included)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.format}: {self.blocks} blocks, {self.query_heads} query heads, kv heads "
                f"{min(self.kv_heads)}..{max(self.kv_heads)}, MLP widths {min(self.mlp_widths)}..{max(self.mlp_widths)}; "
                f"padded with {self.padded_heads} zero query heads and {self.padded_channels} zero MLP channels; "
                f"{self.parameters:,} parameters")


def _grow_rows(module: nn.Module, rows: int) -> None:
    """Append ``rows`` zero output rows (and zero bias entries) to a linear layer."""
    if rows <= 0:
        return
    w = weight_view(module)
    set_weight(module, torch.cat([w, w.new_zeros(rows, w.shape[1])]))
    if module.bias is not None:
        module.bias = nn.Parameter(torch.cat([module.bias.data, module.bias.data.new_zeros(rows)]))


def _grow_cols(module: nn.Module, cols: int) -> None:
    """Append ``cols`` zero input columns to a linear layer."""
    if cols > 0:
        w = weight_view(module)
        set_weight(module, torch.cat([w, w.new_zeros(w.shape[0], cols)], dim=1))


def _give_biases(modules: list[nn.Module]) -> None:
    for module in modules:
        if module.bias is None:
            w = module.weight
            module.bias = nn.Parameter(torch.zeros(weight_view(module).shape[0], dtype=w.dtype, device=w.device))


def query_heads(model: nn.Module) -> int:
    """The model-wide query-head count of the export: the dense count ``hidden / head_dim`` (the
    published configuration code derives ``head_dim`` from it), or the widest block if that is more."""
    adapter = adapter_for(model)
    counts = [adapter.attention_counts(i) for i in range(len(adapter.blocks))]
    head_dim = counts[0][2]
    hidden = model.config.hidden_size
    dense = hidden // head_dim if hidden % head_dim == 0 else 0
    return max(dense, *(n_q for n_q, _, _ in counts))


def pad_for_decilm(model: nn.Module) -> ExportResult:
    """Pad ``model`` (a Llama, in place) to the DeciLM grid: every block ``query_heads(model)`` query
    heads and an MLP width that is a multiple of 256, all added weights zero; one bias flag per part."""
    adapter = adapter_for(model)
    n_heads = query_heads(model)
    result = ExportResult("decilm", len(adapter.blocks), n_heads)
    attention_parts, mlp_parts = [], []
    for i, block in enumerate(adapter.blocks):
        n_q, n_kv, head_dim = adapter.attention_counts(i)
        group = n_q // n_kv
        if n_heads % group:
            raise PrunekitError(f"block {i} shares each key/value head among {group} query heads, which does not "
                                f"divide the {n_heads} query heads of the DeciLM layout; it cannot be exported")
        attn, mlp = block.self_attn, block.mlp
        extra = n_heads - n_q  # whole kv groups, appended: query head h still reads kv head h // group
        _grow_rows(attn.q_proj, extra * head_dim)
        _grow_rows(attn.k_proj, extra // group * head_dim)
        _grow_rows(attn.v_proj, extra // group * head_dim)
        _grow_cols(attn.o_proj, extra * head_dim)
        width = adapter.mlp_width(i)
        padded = -(-width // DECILM_FFN_MULTIPLE) * DECILM_FFN_MULTIPLE
        _grow_rows(mlp.gate_proj, padded - width)
        _grow_rows(mlp.up_proj, padded - width)
        _grow_cols(mlp.down_proj, padded - width)
        result.kv_heads.append(n_heads // group)
        result.mlp_widths.append(padded)
        result.padded_heads += extra
        result.padded_channels += padded - width
        attention_parts.append([attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj])
        mlp_parts.append([mlp.gate_proj, mlp.up_proj, mlp.down_proj])
    for parts in (attention_parts, mlp_parts):  # the layout has one bias flag per part, for every block
        if any(m.bias is not None for modules in parts for m in modules):
            _give_biases([m for modules in parts for m in modules])
    result.parameters = sum(p.numel() for p in model.parameters())
    return result


def decilm_config(model: nn.Module, result: ExportResult) -> dict:
    """``config.json`` of the padded ``model`` in the published DeciLM layout."""
    config = model.config.to_dict()
    for key in (CONFIG_KEY, "intermediate_size", "num_key_value_heads", "auto_map", "_name_or_path",
                "transformers_version"):
        config.pop(key, None)
    hidden = config["hidden_size"]
    head_dim = adapter_for(model).attention_counts(0)[2]
    blocks = []
    for n_kv, width in zip(result.kv_heads, result.mlp_widths):
        attention = {"no_op": False, "replace_with_linear": False, "sparsify": None,
                     "n_heads_in_group": result.query_heads // n_kv, "window_length": None, "num_sink_tokens": None,
                     "use_prefill_window_in_sink_attention": False, "unshifted_sink": False}
        ffn = {"no_op": False, "replace_with_linear": False, "sparsify": None,
               "ffn_mult": decilm_ffn_mult(width, hidden)}
        blocks.append({"attention": attention, "ffn": ffn})
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in config and "rope_theta" in rope:  # readers written for transformers 4 read these
        config["rope_theta"] = rope["rope_theta"]
        config.setdefault("rope_scaling", None if rope.get("rope_type", "default") == "default" else rope)
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    block0 = adapter_for(model).blocks[0]
    config.update(model_type=DECILM_TYPE, architectures=[DECILM_ARCHITECTURE],
                  num_attention_heads=result.query_heads, head_dim=head_dim,
                  num_hidden_layers=len(blocks), block_configs=blocks,
                  attention_bias=block0.self_attn.o_proj.bias is not None,
                  mlp_bias=block0.mlp.down_proj.bias is not None,
                  intermediate_size=None, num_key_value_heads=None)  # per block only, as the published config
    if [w for _, w in decilm_block_widths(config)] != result.mlp_widths:  # the reader's rules, on what we wrote
        raise RuntimeError("the DeciLM config does not reproduce the exported widths")
    return config


def check_exportable(model: nn.Module, fmt: str) -> None:
    """One-line errors before any work: an unknown format, a model the layout cannot hold."""
    if fmt not in FORMATS:
        from prunekit.core.errors import unknown_choice

        raise unknown_choice("format", fmt, FORMATS, where="prunekit export")
    model_type = getattr(model.config, "model_type", None)
    if model_type != "llama":
        raise PrunekitError(f"--format decilm writes Llama models (the DeciLM layout is a Llama with per-block "
                            f"widths); this model is {model_type!r}")


def export_decilm(model: nn.Module, out: str | Path, tokenizer=None, overwrite: bool = False,
                  source: str | None = None, manifest: dict | None = None) -> ExportResult:
    """Write ``model`` (a Llama, per-layer widths or not; left unchanged) to ``out`` in the DeciLM /
    Nemotron-NAS layout, atomically, with a tokenizer and ``prunekit.json``."""
    from prunekit.core.io import atomic_output, write_json, write_manifest

    check_exportable(model, "decilm")
    padded = copy.deepcopy(model)
    if hasattr(padded.config, CONFIG_KEY):
        delattr(padded.config, CONFIG_KEY)
    result = pad_for_decilm(padded)
    config = decilm_config(padded, result)
    with atomic_output(out, overwrite, source) as tmp:
        padded.save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / "config.json", dict(sorted(config.items())))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_manifest(tmp, {**(manifest or {}), "export": result.to_dict()}, source)
    return result


def run_export(args) -> int:
    """``prunekit export --model IN --format decilm --out OUT``: load (any prunekit folder), export, say how."""
    from prunekit.core.io import check_output
    from prunekit.models.loading import check_weights, load_config, load_model, load_tokenizer

    if args.format not in FORMATS:
        from prunekit.core.errors import unknown_choice

        raise unknown_choice("--format", args.format, FORMATS)
    config = load_config(args.model)  # checks that need no weights come first
    if config.model_type != "llama":
        raise PrunekitError(f"--format decilm writes Llama models; {args.model!r} is {config.model_type!r}")
    path = check_weights(args.model, args.trust_pickle_weights)
    out = check_output(args.out, args.overwrite, inputs=(args.model, path))
    model = load_model(args.model, dtype=torch.float32, trust_pickle_weights=args.trust_pickle_weights)
    try:
        tokenizer = load_tokenizer(args.model)
    except PrunekitError:
        tokenizer = None
    result = export_decilm(model, out, tokenizer, overwrite=args.overwrite, source=path)
    if args.json:
        print(dumps_json({**result.to_dict(), "model": str(args.model), "out": str(out)}))
        return 0
    if not args.quiet:
        print(result.summary())
    print(f"saved to {out}: the DeciLM / Nemotron-NAS layout (model_type nemotron-nas, block_configs) for serving "
          "engines that read it (vLLM, llama.cpp's converter; not run in them here); prunekit.load_pretrained "
          "reads it back")
    return 0


run = run_export  # the CLI's entry point for ``prunekit export``


def add_parser(sub):
    """The ``export`` sub-command's parser."""
    from prunekit.core.cli_args import add_output_flags

    p = sub.add_parser("export", help="write a pruned model in a layout serving engines read (decilm: "
                       "Nemotron-NAS block_configs, per-block MLP widths and kv heads)")
    p.add_argument("--model", required=True, help="a folder prunekit wrote (per-layer widths or not), a name or hub id")
    p.add_argument("--format", required=True, help=f"one of: {', '.join(FORMATS)}")
    add_output_flags(p, out="output folder (must not exist unless --overwrite)", required=True)
    p.add_argument("--overwrite", action="store_true")
    add_trust_pickle_arg(p)
    return p
