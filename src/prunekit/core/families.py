"""Everything a model family means, in one table.

A *family* is a Hugging Face ``model_type`` whose decoder prunekit knows by name: where its list of
decoder blocks is, which linear layers make up attention and the MLP, how attention heads are laid
out in them (separate q/k/v with grouped-query attention, GPT-2's stacked ``[q | k | v]``,
GPT-NeoX's per-head ``[q_h | k_h | v_h]``), which config keys hold widths and head counts, and
which attributes an attention module keeps about its own head count.

Linear layers: ``nn.Linear`` stores its weight (out x in); GPT-2's ``Conv1D`` stores it transposed
(in x out). :func:`is_transposed` is the one place that recognises ``Conv1D``; everything else reads
and writes weights through :func:`weight_view` (out x in, sharing storage with the parameter) and
replaces them through :func:`set_weight`.

Lookup: :func:`family_for` tries the table, then :func:`discover`, which finds the decoder blocks of
any Hugging Face decoder from its own structure (the ``ModuleList`` of its ``_no_split_modules``
blocks). One-shot pruning needs only the blocks and their linear layers, so it works on every
decoder discovery finds (Gemma, Phi, OLMo, ...); structured pruning also needs the attention and
MLP layout, which only the table knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunekit.core.errors import PrunekitError

# ------------------------------------------------------------------ linear layers


def is_transposed(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (GPT-2), a linear layer whose weight is stored (in x out)."""
    return type(module).__name__ == "Conv1D"


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or a transposed linear layer (GPT-2's ``Conv1D``): the layers prunekit prunes."""
    return isinstance(module, nn.Linear) or is_transposed(module)


def as_out_in(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor laid out like ``module.weight`` (a gradient, a mask), seen as (out x in)."""
    return tensor.t() if is_transposed(module) else tensor


def weight_view(module: nn.Module) -> torch.Tensor:
    """The weight as an (out_features x in_features) tensor sharing storage with the parameter."""
    return as_out_in(module, module.weight.data)


def set_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Give ``module`` a new weight parameter holding a copy of ``weight`` (out x in), and update its
    size attributes. The bias is left alone."""
    out, inp = weight.shape
    module.weight = nn.Parameter(as_out_in(module, weight).clone(memory_format=torch.contiguous_format))
    if is_transposed(module):
        module.nf, module.nx = out, inp
    else:
        module.out_features, module.in_features = out, inp


def new_linear(like: nn.Module, out: int, inp: int, bias: bool) -> nn.Module:
    """A fresh linear layer of the same kind and dtype as ``like``, shaped (out x in)."""
    dtype = like.weight.dtype
    if is_transposed(like):
        new = type(like)(out, inp)  # Conv1D(nf=out, nx=in)
        if not bias:
            new.bias = None
        return new.to(dtype)
    return nn.Linear(inp, out, bias=bias, dtype=dtype)


def linears(block: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """The linear layers of one block, keyed by ``prefix`` + their name in the block, in module order
    (the order the block registers them: its execution order, except OPT, which registers k, v, q)."""
    return {prefix + name: m for name, m in block.named_modules() if is_linear(m)}


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class AttentionLayout:
    """Where attention's linear layers are and how its heads are laid out in them.

    Names are relative to the attention module, except ``path`` (relative to the block). Either
    ``q``/``k``/``v`` are separate projections (grouped-query attention possible), or ``qkv`` is
    one fused projection (then every query head has its own key/value head).
    """

    path: str  # the attention module, relative to the block
    out: str  # output projection: its input columns are the heads
    q: str | None = "q_proj"
    k: str | None = "k_proj"
    v: str | None = "v_proj"
    qkv: str | None = None  # a fused projection instead of q/k/v
    qkv_order: str = "stacked"  # "stacked": rows [q | k | v]; "per_head": rows [q_h | k_h | v_h] for each head h
    head_dim_attr: str = "head_dim"  # the attention module's attribute holding the size of one head
    heads_key: str = "num_attention_heads"  # config key of the query-head count
    kv_heads_key: str | None = None  # config key of the key/value-head count (GQA); None: as many as query heads
    head_dim_key: str | None = None  # config key the model reads for an explicit head size (absent: hidden /
    # heads); None: it always derives hidden / heads, so pruned head counts go into layer_shapes, not the config
    count_attrs: tuple[str, ...] = ()  # attention-module attributes holding the query-head count
    width_attrs: tuple[str, ...] = ()  # attention-module attributes holding heads x head size

    @property
    def producers(self) -> tuple[str, ...]:
        return (self.qkv,) if self.qkv else (self.q, self.k, self.v)


@dataclass(frozen=True)
class MlpLayout:
    """The MLP's producers (their output rows are its channels) and consumer (its input columns)."""

    producers: tuple[str, ...]  # relative to the block
    consumer: str
    width_key: str  # config key of the channel count (intermediate size)


@dataclass(frozen=True)
class Family:
    """One model family: its decoder blocks, attention and MLP layout (None for a family found by
    :func:`discover`: one-shot pruning only)."""

    model_type: str  # Hugging Face config.model_type
    name: str  # how people write it
    blocks: str  # attribute path of the ModuleList of decoder blocks
    attention: AttentionLayout | None = None
    mlp: MlpLayout | None = None
    config_path: str = ""  # the sub-config holding the widths and head counts ("text_config"), "" = the config

    @property
    def structured(self) -> bool:
        """Whether structured pruning knows this family's attention and MLP layout."""
        return self.attention is not None and self.mlp is not None

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def widths_config(self, config):
        """The (sub-)config whose keys hold the widths and head counts of the blocks."""
        return getattr(config, self.config_path) if self.config_path else config

    def attention_module(self, block: nn.Module) -> nn.Module:
        return block.get_submodule(self.attention.path)

    def attention_counts(self, block: nn.Module) -> tuple[int, int, int]:
        """(query heads, key/value heads, head size) of ``block``, read from its module shapes."""
        lay = self.attention
        attn = self.attention_module(block)
        head_dim = getattr(attn, lay.head_dim_attr)
        n_q = weight_view(attn.get_submodule(lay.out)).shape[1] // head_dim
        n_kv = weight_view(attn.get_submodule(lay.k)).shape[0] // head_dim if lay.qkv is None else n_q
        return n_q, n_kv, head_dim

    def mlp_width(self, block: nn.Module) -> int:
        """MLP channels of ``block`` (input features of its consumer)."""
        return weight_view(block.get_submodule(self.mlp.consumer)).shape[1]

    def set_head_count(self, attention: nn.Module, n_q: int, head_dim: int) -> None:
        """Tell an attention module how many query heads it has now (only where it keeps a count:
        Llama/Mistral/Qwen reshape with -1 heads and a fixed head_dim, GPT-NeoX with a fixed head_size)."""
        for attr in self.attention.count_attrs:
            setattr(attention, attr, n_q)
        for attr in self.attention.width_attrs:
            setattr(attention, attr, n_q * head_dim)


def _gqa(model_type: str, name: str, blocks: str = "model.layers", config_path: str = "") -> Family:
    """The Llama layout, shared by Mistral, Qwen2/3 and Gemma 3 (whose 270M model has one key/value
    head: its attention is a single unit, see :mod:`prunekit.structured.graph`)."""
    return Family(model_type, name, blocks,
                  AttentionLayout("self_attn", "o_proj", kv_heads_key="num_key_value_heads", head_dim_key="head_dim"),
                  MlpLayout(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "intermediate_size"), config_path)


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    _gqa("llama", "Llama"),
    _gqa("mistral", "Mistral"),
    _gqa("qwen2", "Qwen2"),
    _gqa("qwen3", "Qwen3"),
    _gqa("gemma3_text", "Gemma 3"),
    _gqa("gemma3", "Gemma 3 (multimodal)", "model.language_model.layers", "text_config"),
    Family("opt", "OPT", "model.decoder.layers",
           AttentionLayout("self_attn", "out_proj", count_attrs=("num_heads",), width_attrs=("embed_dim",)),
           MlpLayout(("fc1",), "fc2", "ffn_dim")),
    Family("gpt2", "GPT-2", "transformer.h",
           AttentionLayout("attn", "c_proj", q=None, k=None, v=None, qkv="c_attn", qkv_order="stacked",
                           count_attrs=("num_heads",), width_attrs=("split_size", "embed_dim")),
           MlpLayout(("mlp.c_fc",), "mlp.c_proj", "n_inner")),
    Family("gpt_neox", "GPT-NeoX", "gpt_neox.layers",
           AttentionLayout("attention", "dense", q=None, k=None, v=None, qkv="query_key_value",
                           qkv_order="per_head", head_dim_attr="head_size"),
           MlpLayout(("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h", "intermediate_size")),
)}
SUPPORTED_FAMILIES = tuple(f.name for f in FAMILIES.values())


# ------------------------------------------------------------------ lookup


def _unsupported(what: str) -> PrunekitError:
    return PrunekitError(f"{what}; supported: any Hugging Face decoder whose blocks can be found, and by name "
                         f"{', '.join(SUPPORTED_FAMILIES)}")


def check_model_type(model_type: str) -> Family | None:
    """The table's family of a config's ``model_type``, or None when the table does not list it
    (then :func:`discover` decides, once the model's skeleton is built)."""
    return FAMILIES.get(model_type)


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _decoder_path(model: nn.Module) -> str:
    """Where the model's own ``get_decoder()`` is ("" when it has none): a multimodal model's language
    model (Gemma 3: ``model.language_model``), whose blocks are searched before any vision tower's."""
    get = getattr(model, "get_decoder", None)
    try:
        decoder = get() if callable(get) else None
    except Exception:  # noqa: BLE001 - a model whose get_decoder is not implemented
        decoder = None
    if not isinstance(decoder, nn.Module):
        return ""
    return next((name for name, module in model.named_modules() if module is decoder), "")


def block_list_path(model: nn.Module) -> str | None:
    """Attribute path of the decoder blocks found from the model's own structure, or None.

    The blocks are the longest ``nn.ModuleList`` whose entries are all of the classes the model
    names in ``_no_split_modules`` (the units transformers keeps on one device) and hold linear
    layers; a model without ``_no_split_modules`` falls back to the longest ``ModuleList`` of
    entries of one class that hold linear layers. The search looks inside the model's
    ``get_decoder()`` first (so a vision tower's layers are never taken for the decoder), then in
    the whole model. Ties go to the first in module order."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    decoder = _decoder_path(model)
    for within in dict.fromkeys([decoder, ""]):
        best, best_len = None, 0
        for path, module in model.named_modules():
            if within and not path.startswith(within + "."):
                continue
            if not isinstance(module, nn.ModuleList) or len(module) <= best_len:
                continue
            kinds = {type(block).__name__ for block in module}
            fits = kinds <= names if names else len(kinds) == 1
            if fits and all(any(is_linear(m) for m in block.modules()) for block in module):
                best, best_len = path, len(module)
        if best is not None:
            return best
    return None


def discover(model: nn.Module) -> Family:
    """A family for a decoder the table does not know: its blocks (:func:`block_list_path`), no
    attention or MLP layout. A clear error when no block list is found."""
    model_type = _model_type(model)
    what = f"model type {model_type!r} ({type(model).__name__})" if model_type else type(model).__name__
    path = block_list_path(model)
    if path is None:
        names = sorted(getattr(model, "_no_split_modules", None) or ())
        wanted = f"of its blocks ({', '.join(names)})" if names else "of blocks of one class"
        raise _unsupported(f"{what} has no recognisable decoder block list (an nn.ModuleList "
                           f"{wanted} holding linear layers)")
    return Family(model_type or type(model).__name__, f"{type(model).__name__} (discovered)", path)


def family_for(model: nn.Module) -> Family:
    """The family of ``model``: the table entry for its ``config.model_type``, else :func:`discover`."""
    model_type = _model_type(model)
    return FAMILIES[model_type] if model_type in FAMILIES else discover(model)


def blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of ``model``."""
    return family_for(model).block_list(model)


@dataclass
class Adapter:
    """A model together with its family: its blocks and their layers by full module name."""

    model: nn.Module
    family: Family

    @property
    def blocks(self) -> nn.ModuleList:
        return self.family.block_list(self.model)

    @property
    def block_prefix(self) -> str:
        return self.family.blocks

    def linears(self, block_index: int) -> dict[str, nn.Module]:
        """Linear layers of one block, in module order, keyed by their full module name."""
        return linears(self.blocks[block_index], f"{self.block_prefix}.{block_index}.")

    def attention_counts(self, block_index: int) -> tuple[int, int, int]:
        """(query heads, key/value heads, head size) of one block."""
        return self.family.attention_counts(self.blocks[block_index])

    def mlp_width(self, block_index: int) -> int:
        return self.family.mlp_width(self.blocks[block_index])


def adapter_for(model: nn.Module) -> Adapter:
    return Adapter(model, family_for(model))
