"""The tokenizer side of vocabulary pruning: which token ids must stay, and ``tokenizer.json`` rewritten.

Works on the ``tokenizer.json`` of a Hugging Face fast tokenizer (the ``tokenizers`` library's
format) whose model is BPE (GPT-2/Llama-3 byte-level BPE, SentencePiece-style BPE with byte
fallback) or Unigram. A kept vocabulary is lossless on a corpus when the pruned tokenizer cuts every
text of that corpus into the same tokens as before (up to the id map):

* **BPE** applies merges in rank order to the symbols of each pre-token. A merge is kept when its
  two inputs and its output are all kept. Every merge that tokenizing the corpus applies produces a
  kept token as long as the keep set is closed under the merge *trajectories* of its tokens: for a
  kept token t, BPE run on t's own string must reach t, and every symbol it starts from and every
  intermediate token it makes on the way is kept (:func:`bpe_closure`). Then, at every step of tokenizing a corpus word, the pruned
  tokenizer's candidate merges are a subset of the original's that contains the original's choice,
  so it makes the same choice (the tokens a BPE makes inside one final token are the tokens BPE makes
  on that token's string alone, since no merge crosses a final boundary). The closure is *not* the
  forward closure "every merge of two kept tokens": the byte alphabet is always kept, and every token
  is a merge of merges of bytes, so the forward closure is the whole vocabulary.
* **Unigram** picks the most likely segmentation (Viterbi) over the pieces in its vocabulary;
  dropping pieces the corpus never uses leaves the best segmentation of every corpus text feasible
  and every other one no better, so nothing else is needed.

Every text still tokenizes after pruning: the byte-level alphabet (byte-level BPE), the byte-fallback
tokens ``<0x00>`` ... ``<0xFF>`` (byte fallback), or else every single-character token, are always
kept, and so are the special tokens. Out-of-domain words fall back to smaller pieces.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from prunekit.core.errors import PrunekitError

MODEL_TYPES = ("BPE", "Unigram")
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))


@dataclass
class TokenizerSpec:
    """What vocabulary pruning needs to know of a ``tokenizer.json`` (parsed once)."""

    data: dict  # the whole tokenizer.json
    kind: str  # "BPE" | "Unigram"
    tokens: list[str]  # id -> token string (the model's vocabulary and the added tokens)
    merges: list[tuple[str, str]] = field(default_factory=list)  # BPE, in rank order
    byte_fallback: bool = False
    byte_level: bool = False  # a ByteLevel pre-tokenizer: every text is made of the 256 byte symbols
    special_ids: set[int] = field(default_factory=set)  # added tokens marked special
    added_ids: set[int] = field(default_factory=set)  # every added token

    @property
    def size(self) -> int:
        return len(self.tokens)

    def ids(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens) if t is not None}


def _has_type(node, name: str) -> bool:
    """Whether a (possibly nested Sequence) normalizer/pre-tokenizer JSON node has a part of type ``name``."""
    if isinstance(node, dict):
        if node.get("type") == name:
            return True
        return any(_has_type(v, name) for v in node.values() if isinstance(v, (dict, list)))
    if isinstance(node, list):
        return any(_has_type(v, name) for v in node)
    return False


def parse_tokenizer(data: dict, where: str = "the tokenizer") -> TokenizerSpec:
    """A :class:`TokenizerSpec` from the content of ``tokenizer.json``; unsupported models are one-line errors."""
    model = data.get("model") or {}
    kind = model.get("type")
    if kind not in MODEL_TYPES:
        raise PrunekitError(f"{where} is a {kind or 'non-BPE'} tokenizer; vocabulary pruning supports "
                            f"{' and '.join(MODEL_TYPES)} tokenizers (tokenizer.json)")
    if kind == "BPE" and (model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")):
        raise PrunekitError(f"{where} uses BPE subword prefixes/suffixes, which vocabulary pruning does not support")
    if kind == "BPE":
        size = max(model["vocab"].values(), default=-1) + 1
        tokens: list = [None] * size
        for token, i in model["vocab"].items():
            tokens[i] = token
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    else:
        tokens = [piece for piece, _score in model["vocab"]]
        merges = []
    special, added = set(), set()
    for entry in data.get("added_tokens") or []:
        i = entry["id"]
        if i >= len(tokens):
            tokens.extend([None] * (i + 1 - len(tokens)))
        tokens[i] = entry["content"]
        added.add(i)
        if entry.get("special"):
            special.add(i)
    if any(t is None for t in tokens):
        hole = tokens.index(None)
        raise PrunekitError(f"{where} has no token with id {hole} (ids must run from 0 to {len(tokens) - 1})")
    return TokenizerSpec(data, kind, tokens, merges, bool(model.get("byte_fallback")),
                         _has_type(data.get("pre_tokenizer"), "ByteLevel"), special, added)


# ------------------------------------------------------------------ BPE, as the tokenizers library runs it

def bpe_symbols(word: str, vocab: dict[str, int], byte_fallback: bool) -> list[str]:
    """The initial symbols of a word: its characters, or their UTF-8 bytes as ``<0xNN>`` tokens when a
    character is not in the vocabulary and the model falls back to bytes (else the character itself)."""
    symbols = []
    for char in word:
        if char in vocab or not byte_fallback:
            symbols.append(char)
        else:
            symbols.extend(f"<0x{b:02X}>" for b in char.encode("utf-8"))
    return symbols


def bpe(word: str, ranks: dict[tuple[str, str], int], vocab: dict[str, int],
        byte_fallback: bool = False) -> tuple[list[str], list[str]]:
    """(the pieces of ``word``, the tokens made on the way) under BPE with merge ``ranks``.

    At each step the pair of neighbours with the lowest merge rank is merged (the leftmost of equal
    pairs first), until no neighbouring pair is a merge: the order of the ``tokenizers`` library."""
    parts = bpe_symbols(word, vocab, byte_fallback)
    made = []
    while len(parts) > 1:
        best, at = math.inf, -1
        for i in range(len(parts) - 1):
            rank = ranks.get((parts[i], parts[i + 1]), math.inf)
            if rank < best:
                best, at = rank, i
        if at < 0:
            break
        merged = parts[at] + parts[at + 1]
        parts[at : at + 2] = [merged]
        made.append(merged)
    return parts, made


def merge_ranks(merges: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    ranks: dict[tuple[str, str], int] = {}
    for rank, pair in enumerate(merges):
        ranks.setdefault(pair, rank)
    return ranks


# ------------------------------------------------------------------ the keep set

def base_ids(spec: TokenizerSpec) -> set[int]:
    """Ids kept whatever the corpus: special tokens, and the alphabet every text can be written in
    (the byte-level symbols, the byte-fallback tokens, or every single-character token)."""
    keep = set(spec.special_ids)
    ids = spec.ids()
    if spec.byte_fallback:
        keep.update(ids[t] for t in BYTE_TOKENS if t in ids)
    else:
        keep.update(i for i, t in enumerate(spec.tokens) if len(t) == 1 and i not in spec.added_ids)
    unk = (spec.data.get("model") or {}).get("unk_token")
    if spec.kind == "BPE" and unk in ids:
        keep.add(ids[unk])
    if spec.kind == "Unigram" and (spec.data["model"].get("unk_id") is not None):
        keep.add(int(spec.data["model"]["unk_id"]))
    return keep


def bpe_closure(spec: TokenizerSpec, keep: Iterable[int]) -> set[int]:
    """``keep`` plus every token BPE starts from or makes on the way to a kept token (see the module
    docstring): the initial symbols matter where the alphabet is not kept whole (byte fallback).

    A token whose own string BPE does not reach (a dead vocabulary entry, e.g. from a keep file)
    stays kept with the tokens made on its string's way."""
    keep = set(keep)
    if spec.kind != "BPE":
        return keep
    ids, ranks = spec.ids(), merge_ranks(spec.merges)
    todo = [i for i in keep if i not in spec.added_ids]
    seen = set(todo)
    while todo:
        i = todo.pop()
        _pieces, made = bpe(spec.tokens[i], ranks, ids, spec.byte_fallback)
        for token in [*bpe_symbols(spec.tokens[i], ids, spec.byte_fallback), *made]:
            j = ids.get(token)
            if j is not None and j not in seen:
                seen.add(j)
                keep.add(j)
                todo.append(j)
    return keep


def top_ids(spec: TokenizerSpec, n: int) -> list[int]:
    """The ``n`` tokens the tokenizer itself ranks most frequent: BPE learns its merges in order of
    frequency in its training data, so the outputs of the first ``n`` merges; Unigram: the ``n``
    pieces of highest log-probability."""
    if n <= 0:
        return []
    ids = spec.ids()
    if spec.kind == "BPE":
        out, seen = [], set()
        for a, b in spec.merges:
            j = ids.get(a + b)
            if j is not None and j not in seen:
                seen.add(j)
                out.append(j)
                if len(out) == n:
                    break
        return out
    scores = [(-score, i) for i, (_piece, score) in enumerate(spec.data["model"]["vocab"]) if i not in spec.added_ids]
    return [i for _s, i in sorted(scores)[:n]]


# ------------------------------------------------------------------ rewriting tokenizer.json

def _remap_post_processor(node, old_to_new: dict[int, int]):
    """Special-token ids inside a post-processor (TemplateProcessing, Bert/Roberta, Sequence) remapped."""
    if isinstance(node, list):
        return [_remap_post_processor(v, old_to_new) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "special_tokens" and isinstance(value, dict):
            out[key] = {name: {**tok, "ids": [old_to_new[i] for i in tok.get("ids", [])]}
                        for name, tok in value.items()}
        elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
            out[key] = [value[0], old_to_new[value[1]]]
        else:
            out[key] = _remap_post_processor(value, old_to_new)
    return out


def rewrite(spec: TokenizerSpec, kept: list[int]) -> dict:
    """A new ``tokenizer.json`` content with the tokens ``kept`` (old ids, sorted) renumbered 0..n-1
    in their old order; BPE merges kept when their inputs and output are all kept."""
    old_to_new = {old: new for new, old in enumerate(kept)}
    data = json.loads(json.dumps(spec.data))  # a deep copy
    model = data["model"]
    kept_set = set(kept)
    if spec.kind == "BPE":
        model["vocab"] = {spec.tokens[old]: new for new, old in enumerate(kept) if old not in spec.added_ids
                          or spec.tokens[old] in spec.data["model"]["vocab"]}
        tokens = set(model["vocab"])
        merges = [(a, b) for a, b in spec.merges if a in tokens and b in tokens and a + b in tokens]
        as_strings = bool(spec.data["model"].get("merges")) and isinstance(spec.data["model"]["merges"][0], str)
        model["merges"] = [f"{a} {b}" for a, b in merges] if as_strings else [list(m) for m in merges]
    else:
        model["vocab"] = [spec.data["model"]["vocab"][old] for old in kept]
        if model.get("unk_id") is not None:
            model["unk_id"] = old_to_new[int(model["unk_id"])]
    data["added_tokens"] = [{**entry, "id": old_to_new[entry["id"]]} for entry in spec.data.get("added_tokens") or []
                            if entry["id"] in kept_set]
    if data.get("post_processor") is not None:
        data["post_processor"] = _remap_post_processor(data["post_processor"], old_to_new)
    padding = data.get("padding")
    if isinstance(padding, dict) and isinstance(padding.get("pad_id"), int):
        padding["pad_id"] = old_to_new.get(padding["pad_id"], 0)
    return data
