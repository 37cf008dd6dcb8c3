"""Vocabulary pruning: the keep set, the merge closure, the rewritten tokenizer, the sliced model.

Hand-built tokenizers (byte-level BPE, SentencePiece-style BPE with byte fallback, Unigram) show the
rules on a few tokens; a tiny random Llama with SmolLM2's real tokenizer shows identical token ids
(up to the id map) and identical logits of the kept tokens, through the CLI and a saved folder.
"""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.cli import main
from prunekit.core.errors import PrunekitError
from prunekit.vocab.prune import (decode_ids, encode_ids, keep_set, map_ids, prune_vocab, read_id_map,
                                  tokenizer_spec)
from prunekit.vocab.tokenizer import base_ids, bpe, bpe_closure, merge_ranks, rewrite, top_ids

TEXT = ("The jury said it did find that many of Atlanta's registration and election laws are outmoded.\n\n"
        "It recommended that Fulton legislators act to have these laws studied and revised to the end of "
        "modernizing and improving them. The grand jury commented on a number of other topics.\n\n")
OUT_OF_DOMAIN = "def f(x):\n    return {'naïve': x ** 2}  # café ✓\n"


def byte_level_bpe(merges, specials=("<s>", "</s>")):
    """A GPT-2 style byte-level BPE tokenizer with the given merges (vocabulary: specials, bytes, merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1])


def ids_of(tokenizer, text):
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_bpe_matches_the_tokenizers_library_on_smollm2_tokens(smollm2_tokenizer):
    spec = tokenizer_spec(smollm2_tokenizer)
    ranks, ids = merge_ranks(spec.merges), spec.ids()
    model = smollm2_tokenizer.backend_tokenizer.model
    words = [spec.tokens[i] for i in range(0, spec.size, 7) if i not in spec.added_ids]
    words += ["Ġmodernizing", "Ġoutmoded", "Ġunbelievably", "ĠAtlanta's"]
    for word in words:
        assert bpe(word, ranks, ids)[0] == [t.value for t in model.tokenize(word)], word


def test_the_merge_closure_keeps_the_tokens_made_on_the_way():
    # "abc" is made by a+b -> ab, then ab+c -> abc: dropping "ab" (never an output) drops both merges
    tok = byte_level_bpe([("a", "b"), ("ab", "c"), ("b", "c"), ("Ġ", "abc"), ("c", "d")])
    spec = tokenizer_spec(tok)
    text = "abc abc bd"
    used = set(ids_of(tok, text).tolist())
    ids = spec.ids()
    assert ids["ab"] not in used and {ids["abc"], ids["Ġabc"]} <= used
    closed = bpe_closure(spec, used | base_ids(spec))
    assert ids["ab"] in closed and ids["bc"] not in closed and ids["cd"] not in closed
    for keep, same in ((sorted(used | base_ids(spec)), False), (sorted(closed), True)):
        data = rewrite(spec, keep)
        from tokenizers import Tokenizer

        pruned = Tokenizer.from_str(json.dumps(data))
        new_ids = torch.tensor(pruned.encode(text, add_special_tokens=False).ids)
        mapped = map_ids(ids_of(tok, text), keep)
        assert (len(new_ids) == len(mapped) and bool((new_ids == mapped).all())) is same
    # the kept merges are exactly those whose inputs and output are kept
    data = rewrite(spec, sorted(closed))
    assert sorted(map(tuple, data["model"]["merges"])) == [("a", "b"), ("ab", "c"), ("Ġ", "abc")]


def test_a_lower_ranked_unused_merge_does_not_change_in_domain_text():
    # "b"+"c" has the lowest rank; in "abcd" BPE makes bc, then bcd; "ab" exists but loses
    tok = byte_level_bpe([("b", "c"), ("a", "b"), ("bc", "d"), ("a", "bcd"), ("x", "y")])
    keep = keep_set(tok, ["abcd ab"])
    spec = tokenizer_spec(tok)
    from tokenizers import Tokenizer

    pruned = Tokenizer.from_str(json.dumps(rewrite(spec, keep.ids)))
    for text in ("abcd ab", "ab abcd", "abcdabcd"):
        assert pruned.encode(text, add_special_tokens=False).ids == map_ids(ids_of(tok, text), keep.ids).tolist()
    assert spec.ids()["xy"] not in keep.ids


def test_byte_fallback_bpe_keeps_the_byte_tokens_and_round_trips_unseen_characters():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    chars = sorted(set("▁" + "".join(TEXT.split())) | set("éü"))
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("a", "n"), ("an", "d"), ("▁", "and"), ("é", "ü")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    keep = keep_set(tok, [TEXT])
    spec = tokenizer_spec(tok)
    assert {spec.ids()[f"<0x{b:02X}>"] for b in range(256)} <= set(keep.ids)
    assert spec.ids()["é"] not in keep.ids  # a character the corpus never uses: its bytes stand in
    model = _tiny_llama(len(tok))
    new, _ = prune_vocab(model, tok, keep)
    assert new(TEXT, add_special_tokens=False)["input_ids"] == map_ids(ids_of(tok, TEXT), keep.ids).tolist()
    # "▁the" is the only token of this corpus: its letters are kept as the symbols BPE starts from
    only = keep_set(tok, ["the the the"])
    assert {spec.ids()[c] for c in "▁the"} <= set(only.ids)
    again, _ = prune_vocab(_tiny_llama(len(tok)), tok, only)
    assert again("the the", add_special_tokens=False)["input_ids"] == map_ids(ids_of(tok, "the the"), only.ids).tolist()
    ood = "une fête éü naïve"
    assert new.decode(new(ood, add_special_tokens=False)["input_ids"]) == tok.decode(ids_of(tok, ood))


def test_unigram_keeps_the_best_segmentation_of_in_domain_text():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(TEXT.replace("\n", " ").split()))
    pieces = [("<unk>", 0.0)] + [(ch, -8.0) for ch in sorted(set("▁" + "".join(words) + "xyzq"))]
    pieces += [("▁" + w, -4.0 - len(w) / 10) for w in words[::2]] + [(w[:3], -6.0) for w in words]
    pieces += [("▁xyz", -3.0), ("qq", -2.0)]
    seen, vocab = set(), []
    for piece, score in pieces:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))
    backend = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    keep = keep_set(tok, [TEXT])
    assert tokenizer_spec(tok).ids()["▁xyz"] not in keep.ids
    new, _ = prune_vocab(_tiny_llama(len(tok)), tok, keep)
    assert new(TEXT, add_special_tokens=False)["input_ids"] == map_ids(ids_of(tok, TEXT), keep.ids).tolist()
    assert len(new) == len(keep.ids) < len(tok)


def test_top_n_follows_the_merge_order(smollm2_tokenizer):
    spec = tokenizer_spec(smollm2_tokenizer)
    first = top_ids(spec, 5)
    ids = spec.ids()
    assert first == [ids[a + b] for a, b in spec.merges[:5]]


def test_id_map_ranges_round_trip():
    ids = [0, 1, 2, 5, 7, 8, 9, 100]
    assert encode_ids(ids) == "0-2,5,7-9,100"
    assert decode_ids(encode_ids(ids)) == ids
    with pytest.raises(PrunekitError, match="bad id map"):
        decode_ids("3-x")
    with pytest.raises(PrunekitError, match="increasing"):
        decode_ids("5,3")


# ------------------------------------------------------------------ the model side

def _tiny_llama(vocab: int, tied: bool = True, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("tied", [True, False])
def test_kept_logits_are_identical_and_ids_map(smollm2_tokenizer, tied):
    tok = smollm2_tokenizer
    model = _tiny_llama(len(tok), tied)
    if not tied:
        with torch.no_grad():
            model.lm_head.weight.normal_()
    old_ids = ids_of(tok, TEXT)[None, :96]
    with torch.no_grad():
        before = model(input_ids=old_ids).logits
    keep = keep_set(tok, [TEXT])
    new, result = prune_vocab(model, tok, keep)
    assert result.tied is tied and result.vocab_after == len(keep.ids) == len(new)
    assert model.get_input_embeddings().weight.shape[0] == len(keep.ids) == model.config.vocab_size
    assert (model.lm_head.weight is model.get_input_embeddings().weight) is tied
    new_ids = ids_of(new, TEXT)[None, :96]
    assert torch.equal(new_ids, map_ids(old_ids, keep.ids))
    with torch.no_grad():
        after = model(input_ids=new_ids).logits
    torch.testing.assert_close(after, before[..., keep.ids], rtol=0, atol=1e-5)
    # special ids follow the map (bos 1, eos/pad 2 are kept as themselves: the first ids are special)
    assert model.config.eos_token_id == keep.ids.index(2)
    assert new.eos_token_id == keep.ids.index(tok.eos_token_id)


def test_cli_writes_a_stock_folder_with_the_id_map(smollm2_tokenizer, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = smollm2_tokenizer
    source = tmp_path / "model"
    _tiny_llama(len(tok)).save_pretrained(source)
    tok.save_pretrained(source)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    keep_file = tmp_path / "keep.txt"
    keep_file.write_text("# extra ids\n40000, 40001\n")
    out = tmp_path / "out"
    assert main(["vocab", "--model", source, "--text", corpus, "--keep-file", keep_file, "--out", out,
                 "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    kept = read_id_map(out)
    assert reply["vocab_after"] == len(kept) and {40000, 40001} <= set(kept)
    model = AutoModelForCausalLM.from_pretrained(out)
    new = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(new) == len(kept)
    old_ids = ids_of(tok, TEXT)
    assert torch.equal(ids_of(new, TEXT), map_ids(old_ids, kept))
    assert new.decode(ids_of(new, OUT_OF_DOMAIN)) == OUT_OF_DOMAIN  # lossless on any text (smaller pieces)
    # prunekit.json is a recipe: the same step again gives the same kept ids
    again = tmp_path / "again"
    assert main(["vocab", "--model", source, "--recipe", out / "prunekit.json", "--out", again, "--quiet"]) == 0
    assert read_id_map(again) == kept
    # pruning a pruned model again records ids of the original model
    twice = tmp_path / "twice"
    assert main(["vocab", "--model", out, "--text", corpus, "--out", twice, "--quiet"]) == 0
    assert read_id_map(twice) == keep_set(tok, [TEXT]).ids  # the same as one prune of the original
    assert torch.equal(ids_of(AutoTokenizer.from_pretrained(twice), TEXT), map_ids(old_ids, read_id_map(twice)))


def test_cli_top_and_keep_file_keep_what_the_help_says(smollm2_tokenizer, tmp_path, capsys):
    """--top N adds the tokenizer's first N merge outputs to the corpus's ids, --keep-file its ids, --no-text
    drops the corpus; prunekit.json records them, replays them, and a flag overrides the recipe."""
    tok = smollm2_tokenizer
    spec = tokenizer_spec(tok)
    source = tmp_path / "model"
    _tiny_llama(len(tok)).save_pretrained(source)
    tok.save_pretrained(source)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    keep_file = tmp_path / "keep.txt"
    keep_file.write_text("45000 # a rare token\n45001,45002\n")

    def vocab(name, *flags):
        assert main(["vocab", "--model", source, "--out", tmp_path / name, "--json", *flags]) == 0
        return json.loads(capsys.readouterr().out), read_id_map(tmp_path / name)

    corpus_only = set(keep_set(tok, [TEXT]).ids)
    used = set(ids_of(tok, TEXT).tolist())
    reply, kept = vocab("top", "--text", corpus, "--top", "300")
    top = set(top_ids(spec, 300))
    assert len(top) == 300 and top <= set(kept) and corpus_only <= set(kept)
    assert set(kept) == set(bpe_closure(spec, corpus_only | top))
    assert reply["counts"]["top"] == 300 and reply["counts"]["top_new"] == len(top - used) > 0
    manifest = json.loads((tmp_path / "top" / "prunekit.json").read_text())
    assert manifest["steps"][0]["top"] == 300
    # the recipe replays --top; --top 0 given with it overrides the recipe's 300
    _, again = vocab("again", "--recipe", tmp_path / "top" / "prunekit.json")
    assert again == kept
    assert capsys.readouterr().err == ""  # --json: no status lines
    assert main(["vocab", "--model", source, "--out", tmp_path / "zero", "--recipe", tmp_path / "top" / "prunekit.json",
                 "--top", "0"]) == 0
    shown = capsys.readouterr()
    assert f"keep set: tokenizing {corpus}" in shown.err and f"keep set: {len(corpus_only):,} of" in shown.err
    assert f"kept: corpus {len(used):,}, top 0, top_new 0" in shown.out
    assert set(read_id_map(tmp_path / "zero")) == corpus_only
    # --no-text: the keep file's ids, the alphabet and specials, and their merge closure; nothing of the corpus
    reply, listed = vocab("listed", "--no-text", "--keep-file", keep_file)
    assert {45000, 45001, 45002} <= set(listed)
    assert set(listed) == bpe_closure(spec, {45000, 45001, 45002} | base_ids(spec) | set(tok.all_special_ids))
    assert reply["counts"]["corpus"] == 0 and reply["counts"]["listed_new"] == 3
    assert json.loads((tmp_path / "listed" / "prunekit.json").read_text())["steps"][0]["text"] is None


def test_top_beyond_the_merges_counts_what_it_kept():
    tok = byte_level_bpe([("a", "b"), ("ab", "c"), ("Ġ", "abc")])
    keep = keep_set(tok, None, top=1000)
    assert keep.counts["top"] == keep.counts["top_new"] == 3  # three merges: three tokens, not 1000
    with pytest.raises(PrunekitError, match="no text, top or keep ids"):
        keep_set(tok, None)


def test_keep_ids_beyond_the_embedding_rows_are_an_error(smollm2_tokenizer, tmp_path):
    from prunekit.vocab.step import VocabStep, step_keep_set

    tok = smollm2_tokenizer
    rows = len(tok) - 100  # an embedding with fewer rows than the tokenizer has tokens
    keep_file = tmp_path / "keep.txt"
    keep_file.write_text(f"5\n{rows + 3}\n")
    with pytest.raises(PrunekitError, match=f"line 2: token id {rows + 3} is not in the vocabulary"):
        step_keep_set(tok, VocabStep(text=None, keep_file=str(keep_file)), rows)
    with pytest.raises(PrunekitError, match=f"embedding's {rows:,} rows"):
        keep_set(tok, None, keep_ids=[rows + 3], model_vocab=rows)
    assert max(step_keep_set(tok, VocabStep(text=None, keep_ids=[rows - 1]), rows).ids) == rows - 1


def test_vocab_recipe_step_is_registered_and_checked():
    from prunekit.core.recipe import Recipe
    from prunekit.core.registry import STEPS

    assert "vocab" in STEPS
    recipe = Recipe.from_dict({"steps": [{"kind": "vocab", "text": "brown:b-r", "top": 100}]})
    assert recipe.kinds() == ["vocab"]
    with pytest.raises(PrunekitError, match="top"):
        Recipe.from_dict({"steps": [{"kind": "vocab", "top": -1}]})
    with pytest.raises(PrunekitError, match="keeps nothing"):
        Recipe.from_dict({"steps": [{"kind": "vocab", "text": None}]})


@pytest.mark.slow
def test_real_smollm2_brown_vocab_is_lossless(smollm2_path):
    """SmolLM2-135M, vocabulary of Brown b-r: same ids on all of b-r, same kept logits, no worse perplexity."""
    from prunekit.core.data_sources import evaluation_windows, token_stream
    from prunekit.evaluate.perplexity import window_nlls
    from prunekit.models import load_model, load_tokenizer

    tok, model = load_tokenizer(smollm2_path), load_model(smollm2_path)
    windows = evaluation_windows("brown:r", tok, 2, 256)
    with torch.no_grad():
        before = model(input_ids=windows).logits
    nll_before = window_nlls(model, windows)
    keep = keep_set(tok, "brown:b-r")
    new, result = prune_vocab(model, tok, keep)
    assert 30_000 < result.vocab_after < 40_000 and result.tied
    stream = token_stream("brown:b-r", tok)
    assert torch.equal(token_stream("brown:b-r", new), map_ids(stream, keep.ids))
    mapped = map_ids(windows, keep.ids)
    with torch.no_grad():
        after = model(input_ids=mapped).logits
    torch.testing.assert_close(after, before[..., keep.ids], rtol=0, atol=1e-4)
    assert (window_nlls(model, mapped) <= nll_before + 1e-6).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma3-270m", "qwen2.5-0.5b"])
def test_real_tokenizers_stay_lossless(name):
    """Gemma 3 (BPE with byte fallback, 262k tokens) and Qwen2.5 (byte-level BPE, 151k): the vocabulary
    of Brown j tokenizes all of Brown j to the same ids (tokenizer only, no weights)."""
    from prunekit.core.data_sources import token_stream
    from prunekit.models import load_tokenizer
    from prunekit.vocab.prune import rewrite_tokenizer

    tok = load_tokenizer(name)
    keep = keep_set(tok, "brown:j")
    new = rewrite_tokenizer(tok, keep.ids)
    assert len(new) == len(keep.ids) < len(tok) // 2
    assert torch.equal(token_stream("brown:j", new), map_ids(token_stream("brown:j", tok), keep.ids))
    ood = "naïve café — 東京 ✓ def f(x): return x ** 2"
    assert new.decode(new(ood, add_special_tokens=False)["input_ids"]) == tok.decode(ids_of(tok, ood))
