"""Vocabulary pruning: keep the token ids a corpus needs, drop the other rows of the embedding and
the output head, and rewrite the tokenizer so that it never produces a dropped id.

    keep = keep_set(tokenizer, text="brown:b-r", top=0, keep_ids=())
    new_tokenizer, result = prune_vocab(model, tokenizer, keep)     # the model is changed in place

The kept ids keep their order: new id ``j`` is old id ``result.kept_ids[j]``. The model computes the
same hidden states for the same (kept) input tokens, so the logits of the kept tokens are the same
numbers as before and the softmax runs over fewer tokens (a kept token's probability can only rise).
The tokenizer side (which ids must stay for in-domain text to tokenize the same, and the rewritten
``tokenizer.json``) is :mod:`prunekit.vocab.tokenizer`.
"""

from __future__ import annotations

import json

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from prunekit.core.errors import PrunekitError, short_repr
from prunekit.core.io import scratch_folder, write_text
from prunekit.vocab.tokenizer import TokenizerSpec, base_ids, bpe_closure, parse_tokenizer, rewrite, top_ids

MAX_KEEP_FILE = 16 << 20  # a keep file lists token ids: 16 MB is far more than any vocabulary


@dataclass
class KeepSet:
    """The kept token ids (old ids, sorted) and where they come from."""

    ids: list[int]
    vocab_size: int  # of the tokenizer before pruning
    counts: dict = field(default_factory=dict)  # corpus, top, listed (keep file/ids), base (special + alphabet), closure

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VocabResult:
    """What a vocabulary prune did: sizes before/after and the id map (new id j = old id ``kept_ids[j]``)."""

    kept_ids: list[int]
    vocab_before: int
    vocab_after: int
    parameters_before: int
    parameters_after: int
    tied: bool
    counts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"vocabulary {self.vocab_before:,} -> {self.vocab_after:,} tokens "
                f"({self.vocab_after / max(self.vocab_before, 1):.1%}); parameters {self.parameters_before:,} -> "
                f"{self.parameters_after:,} ({1 - self.parameters_after / max(self.parameters_before, 1):.1%} fewer; "
                f"{'tied' if self.tied else 'untied'} output head)")


def tokenizer_spec(tokenizer) -> TokenizerSpec:
    """The parsed ``tokenizer.json`` of a fast (``tokenizers``-backed) tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise PrunekitError(f"vocabulary pruning needs a fast tokenizer (tokenizer.json); "
                            f"{type(tokenizer).__name__} has none")
    return parse_tokenizer(json.loads(backend.to_str()), f"tokenizer {type(tokenizer).__name__}")


def read_keep_file(path: str | Path, vocab_size: int | None = None) -> list[int]:
    """Token ids from a text file: integers separated by spaces, commas or new lines; ``#`` starts a
    comment. A value that is not an id of the vocabulary is a one-line error naming its line."""
    from prunekit.core.io import read_small_text

    shown = str(path)
    text = read_small_text(path, "keep file", MAX_KEEP_FILE)
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        for item in line.split("#", 1)[0].replace(",", " ").split():
            try:
                value = int(item)
            except ValueError:
                raise PrunekitError(f"keep file {shown!r} line {number}: {short_repr(item, 40)} is not a token id "
                                    "(an integer)") from None
            if value < 0 or (vocab_size is not None and value >= vocab_size):
                raise PrunekitError(f"keep file {shown!r} line {number}: token id {value} is not in the vocabulary "
                                    f"(ids 0..{vocab_size - 1 if vocab_size else '?'})")
            ids.append(value)
    return ids


def corpus_ids(tokenizer, text) -> torch.Tensor:
    """The distinct token ids of a text source (any source of :mod:`prunekit.core.data_sources`)."""
    from prunekit.core.data_sources import token_stream

    return torch.unique(token_stream(text, tokenizer))


def keep_set(tokenizer, text=None, top: int = 0, keep_ids=(), model_vocab: int | None = None) -> KeepSet:
    """The token ids to keep: those ``text`` uses, the tokenizer's ``top`` most frequent, ``keep_ids``,
    the special tokens and the alphabet, closed under BPE merge trajectories (see
    :mod:`prunekit.vocab.tokenizer`). ``model_vocab`` (the embedding's rows) bounds the ids.

    A source that yields no token and nothing else to keep is a one-line error."""
    spec = tokenizer_spec(tokenizer)
    size = spec.size
    bound = min(size, model_vocab) if model_vocab is not None else size
    bad = [i for i in keep_ids if not 0 <= i < bound]
    if bad:
        rows = f" and the embedding's {model_vocab:,} rows" if bound < size else ""
        raise PrunekitError(f"token id {bad[0]} is not in the vocabulary (ids 0..{bound - 1}: the tokenizer's "
                            f"{size:,} tokens{rows})")
    used = set(corpus_ids(tokenizer, text).tolist()) if text is not None else set()
    top_list = set(top_ids(spec, top))
    if not used and not top_list and not keep_ids:
        from prunekit.core.data_sources import describe_source

        what = f"text {describe_source(text)!r} has no tokens" if text is not None else "no text, top or keep ids"
        raise PrunekitError(f"{what}, so the kept vocabulary would be empty (only special and alphabet tokens); "
                            "give a text with content, --top or --keep-file")
    chosen = used | top_list | set(keep_ids)
    base = base_ids(spec) | {i for i in getattr(tokenizer, "all_special_ids", []) if 0 <= i < size}
    keep = bpe_closure(spec, chosen | base)
    ids = sorted(keep)
    if model_vocab is not None:
        ids = [i for i in ids if i < model_vocab]  # tokenizer ids the embedding has no row for
    # top: ids the tokenizer's top-N gave (fewer than N when it has fewer merges/pieces); top_new: of
    # those, the ids the corpus does not use (what --top adds); listed_new likewise for keep_ids
    counts = {"corpus": len(used), "top": len(top_list), "top_new": len(top_list - used),
              "listed": len(set(keep_ids)), "listed_new": len(set(keep_ids) - used - top_list), "base": len(base),
              "closure": len(keep) - len(chosen | base), "kept": len(ids)}
    return KeepSet(ids, size, counts)


# ------------------------------------------------------------------ the model side

def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _remap_id(value, old_to_new: dict[int, int]):
    if isinstance(value, int) and not isinstance(value, bool):
        return old_to_new.get(value)
    if isinstance(value, (list, tuple)):
        mapped = [old_to_new.get(v) for v in value if isinstance(v, int)]
        return [v for v in mapped if v is not None] or None
    return value


SPECIAL_CONFIG_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id",
                       "decoder_start_token_id")


@torch.no_grad()
def shrink_embeddings(model: nn.Module, kept_ids: list[int]) -> bool:
    """Keep only the rows ``kept_ids`` (old ids, new order) of the input embedding and the output
    head (its bias too), tied or untied; the config's vocab size and special-token ids follow.
    Returns whether the head is tied to the embedding."""
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    rows = emb.weight.shape[0]
    if not kept_ids or max(kept_ids) >= rows or min(kept_ids) < 0:
        raise PrunekitError(f"kept token ids must lie in 0..{rows - 1} (the embedding's rows)")
    index = torch.tensor(kept_ids, dtype=torch.long, device=emb.weight.device)
    tied = head is not None and head.weight is emb.weight
    emb.weight = nn.Parameter(emb.weight.index_select(0, index).clone())
    emb.num_embeddings = len(kept_ids)
    old_to_new = {old: new for new, old in enumerate(kept_ids)}
    if getattr(emb, "padding_idx", None) is not None:
        emb.padding_idx = old_to_new.get(emb.padding_idx)
    if head is not None:
        head.weight = emb.weight if tied else nn.Parameter(head.weight.index_select(0, index).clone())
        if getattr(head, "bias", None) is not None:
            head.bias = nn.Parameter(head.bias.index_select(0, index).clone())
        head.out_features = len(kept_ids)
    for config in {id(c): c for c in (model.config, _text_config(model))}.values():
        config.vocab_size = len(kept_ids)
        for key in SPECIAL_CONFIG_KEYS:
            if getattr(config, key, None) is not None:
                setattr(config, key, _remap_id(getattr(config, key), old_to_new))
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        for key in SPECIAL_CONFIG_KEYS:
            if getattr(generation, key, None) is not None:
                setattr(generation, key, _remap_id(getattr(generation, key), old_to_new))
    return tied


def rewrite_tokenizer(tokenizer, kept_ids: list[int]):
    """A tokenizer of the same class whose vocabulary is ``kept_ids`` renumbered 0..n-1 (loaded back
    through ``AutoTokenizer`` from a rewritten ``tokenizer.json``, so it is what a saved folder gives)."""
    from transformers import AutoTokenizer

    spec = tokenizer_spec(tokenizer)
    data = rewrite(spec, kept_ids)
    old_to_new = {old: new for new, old in enumerate(kept_ids)}
    with scratch_folder("prunekit-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        write_text(tmp / "tokenizer.json", json.dumps(data, ensure_ascii=False))
        config_file = Path(tmp) / "tokenizer_config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
            decoder = config.get("added_tokens_decoder")
            if isinstance(decoder, dict):
                config["added_tokens_decoder"] = {str(old_to_new[int(k)]): v for k, v in decoder.items()
                                                  if int(k) in old_to_new}
            write_text(config_file, json.dumps(config, indent=2, ensure_ascii=False))
        for stale in ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model"):
            (Path(tmp) / stale).unlink(missing_ok=True)  # the slow files would disagree with tokenizer.json
        new = AutoTokenizer.from_pretrained(tmp)
    if len(new) != len(kept_ids):
        raise PrunekitError(f"the rewritten tokenizer has {len(new)} tokens, expected {len(kept_ids)}")
    return new


def prune_vocab(model: nn.Module, tokenizer, keep: KeepSet | list[int]):
    """Prune ``model``'s vocabulary in place to ``keep``; returns ``(new tokenizer, VocabResult)``."""
    kept = keep.ids if isinstance(keep, KeepSet) else sorted(set(keep))
    counts = keep.counts if isinstance(keep, KeepSet) else {}
    before = sum(p.numel() for p in model.parameters())
    rows = model.get_input_embeddings().weight.shape[0]
    new_tokenizer = rewrite_tokenizer(tokenizer, kept)
    tied = shrink_embeddings(model, kept)
    after = sum(p.numel() for p in model.parameters())
    return new_tokenizer, VocabResult(kept, rows, len(kept), before, after, tied, counts)


def encode_ids(ids: list[int]) -> str:
    """Sorted ids as ranges, ``"0-16,18,20-31"`` (the id map in prunekit.json stays one short line)."""
    parts, start = [], None
    for k, i in enumerate(ids):
        if start is None:
            start = i
        if k + 1 == len(ids) or ids[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ",".join(parts)


def decode_ids(text: str) -> list[int]:
    """The ids of :func:`encode_ids`'s ranges; anything else is a one-line error."""
    ids = []
    try:
        for part in filter(None, str(text).split(",")):
            first, _, last = part.partition("-")
            ids.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise PrunekitError(f"bad id map {short_repr(text)}: expected ranges such as '0-16,18,20-31'") from None
    if any(b <= a for a, b in zip(ids, ids[1:])) or (ids and ids[0] < 0):
        raise PrunekitError(f"bad id map {short_repr(text)}: ids must be increasing and >= 0")
    return ids


def read_id_map(folder) -> list[int] | None:
    """The kept ids recorded in a vocabulary-pruned folder's prunekit.json (None when it has none):
    new id j was old id ``ids[j]`` of the original model."""
    from prunekit.core.io import read_manifest

    text = ((read_manifest(folder).get("result") or {}).get("vocab") or {}).get("kept_ids")
    return decode_ids(text) if text is not None else None


def map_ids(ids: torch.Tensor, kept_ids: list[int]) -> torch.Tensor:
    """Old token ids as new ones (-1 where the id was dropped)."""
    table = torch.full((max(kept_ids) + 1,), -1, dtype=torch.long)
    table[torch.tensor(kept_ids)] = torch.arange(len(kept_ids))
    ids = ids.long()
    out = torch.full_like(ids, -1)
    inside = ids <= max(kept_ids)
    out[inside] = table[ids[inside]]
    return out
