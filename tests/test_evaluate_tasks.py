"""Zero-shot tasks (issue 11): deterministic items pinned by digest, one hand-checked item per task,
and the batched scorer against a plain one-request-at-a-time computation on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from prunekit.core.data_sources import brown_files, parse_genres
from prunekit.core.errors import PrunekitError
from prunekit.core.registry import TASKS
from prunekit.evaluate.scorer import encode_pair, loglikelihoods, score_items
from prunekit.evaluate.tasks.base import LAST_WORD

# sha256 of the whole task file (default options) and of its first 100 items, per version.
# A change to how items are built must bump the task's version and these digests.
DIGESTS = {
    ("wordnet-gloss", "1"): ("71931e14e7ed7ab2d63bfc19047239adef4727fda9611cb4ce4ab6be53640676",
                             "4de3074d0b7a45af8191c717e0cdf5a73d3c6c8c62efda562e90bc1370d3d88e"),
    ("brown-continuation", "1"): ("bbf0bb602763bbbddafc1cf1938db799d1d0a9b228c964edd38980289a22fc03",
                                  "61e9cefbeb24d028cbfd2f526c5b935c9dc851a2d8ecbb4f03b79e723de5d237"),
    ("brown-lastword", "1"): ("5d5aa764d454e9fbdc8c547e957fd3915a2fafd83257594e327e49fdee200771",
                              "d22a53116f0e16c99bd7ae7d91110abda287f54ccf731ac56b6efaeaf66b19fa"),
    ("brown-genre", "1"): ("749ea67174f551431cf806040171284f5a2574c6497028efc4440845f80a581f",
                           "2bd45c51342905e38e1fc611f4218f495404fd3048a089a9e4e0cc063229d627"),
}
SIZES = {"wordnet-gloss": 3000, "brown-continuation": 2000, "brown-lastword": 534, "brown-genre": 628}


@pytest.mark.parametrize("name", TASKS.names())
def test_task_is_deterministic_and_pinned(name):
    task = TASKS.build(name)
    assert (name, task.version) in DIGESTS, f"pin the digests of {name} v{task.version}"
    whole, first = DIGESTS[name, task.version]
    assert len(task.items()) == SIZES[name]
    assert task.digest() == whole and task.digest(100) == first
    again = TASKS.build(name)  # a fresh build, not the cached list
    assert again.items(100) == task.items(100) and again.digest() == whole
    assert TASKS.build(name, {"seed": 1}).digest(100) != first


@pytest.mark.parametrize("name", TASKS.names())
def test_items_are_well_formed(name):
    task = TASKS.build(name)
    items = task.items()
    assert len({(i.context, i.choices, i.target) for i in items}) == len(items)  # no duplicates
    for item in items:
        assert item.context and item.context == item.context.strip()
        if task.kind == LAST_WORD:
            assert item.target.isalpha() and item.target.lower() in item.context.lower()
            assert item.choices == ()
        else:
            assert len(item.choices) == 4 == len(set(item.choices)) and 0 <= item.label < 4
    labels = [i.label for i in items if task.kind != LAST_WORD]
    if labels:  # the right answer's position is spread evenly
        assert all(abs(labels.count(k) / len(labels) - 0.25) < 0.04 for k in range(4))


def test_wordnet_distractors_are_words_of_the_same_part_of_speech():
    from prunekit.evaluate.tasks.wordnet_gloss import POS_FILES, read_pos, wordnet_dir

    index = {POS_FILES[pos]: read_pos(str(wordnet_dir()), pos)[1] for pos in POS_FILES}
    for item in TASKS.build("wordnet-gloss").items(300):
        pos = item.source.split()[2]
        answer = item.choices[item.label]
        for word in item.choices:
            assert word in index[pos], (word, pos)
            if word != answer:  # no distractor shares a sense with the answer
                assert not set(index[pos][word][1]) & set(index[pos][answer][1])


def test_brown_continuation_distractors_come_from_other_documents_of_the_genre():
    from prunekit.evaluate.tasks.brown import documents

    where = {s.text: s.document for doc in documents("a") for s in doc}
    for item in TASKS.build("brown-continuation").items(300):
        true_doc = item.source.split()[1]
        assert where[item.choices[item.label]] == true_doc
        assert all(where[c] != true_doc for k, c in enumerate(item.choices) if k != item.label)


def test_brown_genre_splits_by_document_and_labels_by_genre(smollm2_tokenizer):
    """Test and train items come from disjoint Brown files (every third file of a genre is test), each
    label names its file's genre, the genres are balanced, and every label is one token."""
    from prunekit.evaluate.tasks.brown_genre import LABELS

    genre_of = {label: set(parse_genres(spec)) for label, spec in LABELS.items()}
    files = {}
    for split in ("test", "train"):
        items = TASKS.build("brown-genre", {"split": split}).items()
        files[split] = {item.source.split()[1] for item in items}
        for item in items:
            name = item.source.split()[1]  # e.g. ca43
            assert name[1] in genre_of[item.choices[item.label]]
            assert item.choices == tuple(LABELS) and item.context.startswith("Passage: ")
            assert item.context.endswith("\nGenre:") and 40 <= len(item.context.split()) - 2 <= 80
            group = [f.name for f in brown_files(parse_genres(LABELS[item.choices[item.label]]))]
            assert (group.index(name) % 3 == 0) == (split == "test")  # in name order within the label's files
        counts = [sum(item.label == k for item in items) for k in range(4)]
        assert len(set(counts)) == 1, counts
    assert not files["test"] & files["train"]
    for label in LABELS:
        assert len(smollm2_tokenizer.encode(" " + label)) == 1
    with pytest.raises(PrunekitError, match="split"):
        TASKS.build("brown-genre", {"split": "dev"})


def test_hand_checked_items():
    """Item 0 of each task, checked by hand against the sources (WordNet data.verb; Brown ca33, ca32)."""
    wn = TASKS.build("wordnet-gloss").items(1)[0]
    assert wn.context == "Definition: get used to a certain climate\nWord:"
    assert wn.choices == ("allocate", "indict", "chortle", "acclimatize") and wn.label == 3
    assert wn.source == "wordnet 3.0 verb 00393677"  # "acclimatize acclimatise acclimate | get used to ..."
    bc = TASKS.build("brown-continuation").items(1)[0]
    assert bc.context.startswith("As he left the bandstand to return to his office, the slender, sun-tanned")
    assert bc.context.endswith("had attended the Joseph P. Kennedy School for the Handicapped in Boston.")
    assert bc.choices[bc.label] == '" The nuns there do a wonderful work ", the President commented.'
    assert bc.label == 3 and bc.source == "brown ca33 sentence 29"
    lw = TASKS.build("brown-lastword").items(1)[0]
    assert lw.context.startswith("For A good many seasons I've been looking at the naughty stuff on television, "
                                 "so the other night")
    assert lw.context.endswith("seems as harmless as a Gray Line tour of North Beach at")
    assert lw.target == "night" and lw.source == "brown ca32 sentence 55"
    bg = TASKS.build("brown-genre").items(1)[0]  # ca43 line 116: one sentence of 40 words
    assert bg.context == ("Passage: Further improvements in earnings of the Kansas Turnpike are expected late in 1961, "
                          "with the opening of a new bypass at Wichita, and still later when the turnpike gets "
                          "downtown connections in both Kansas City, Kans., and Kansas City, Mo..\nGenre:")
    assert bg.choices[bg.label] == "news" and bg.source == "brown ca43 sentence 55"


def test_limit_is_a_prefix_and_zero_is_an_error():
    task = TASKS.build("brown-lastword")
    assert task.items(10) == task.items()[:10]
    for bad in (0, -3, True, 1.5):
        with pytest.raises(PrunekitError, match="limit must be an integer >= 1"):
            task.items(bad)


def test_unknown_task_suggests_the_nearest():
    with pytest.raises(PrunekitError, match="unknown task 'wordnet-glos'; did you mean 'wordnet-gloss'"):
        TASKS.build("wordnet-glos")
    with pytest.raises(PrunekitError, match="context_sentences"):
        TASKS.build("brown-continuation", {"context_sentences": 0})


# ------------------------------------------------------------------ the scorer against brute force

@pytest.fixture(scope="module")
def tiny_lm(smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval(), smollm2_tokenizer


def brute_force(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """One request alone: encode context + continuation and the context, run the whole text, add up
    log p(token) over the continuation's tokens. No batching, no padding, no slicing of the logits."""
    while context.endswith(" "):
        context, continuation = context[:-1], " " + continuation
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole])).logits[0].double()
    total, greedy = 0.0, True
    for pos in range(n_context, len(whole)):
        logp = torch.log_softmax(logits[pos - 1], dim=-1)
        total += float(logp[whole[pos]])
        greedy &= int(logp.argmax()) == whole[pos]
    return total, greedy


def test_encode_pair_moves_trailing_spaces_to_the_continuation(smollm2_tokenizer):
    head, tail = encode_pair(smollm2_tokenizer, "The cat sat on the ", "mat")
    assert smollm2_tokenizer.decode(head) == "The cat sat on the"
    assert smollm2_tokenizer.decode(tail) == " mat"


@pytest.mark.parametrize("batch_tokens", [64, 4096])
def test_scorer_matches_brute_force(tiny_lm, batch_tokens):
    model, tokenizer = tiny_lm
    for name in TASKS.names():
        task = TASKS.build(name)
        items = task.items(4)
        requests = [(i.context, c) for i in items for c in i.continuations()]
        got = loglikelihoods(model, tokenizer, requests, batch_tokens=batch_tokens)
        want = [brute_force(model, tokenizer, *r) for r in requests]
        for (ll, greedy), (ref, ref_greedy) in zip(got, want):
            assert ll == pytest.approx(ref, abs=1e-4)
            assert greedy == ref_greedy
        result = score_items(model, tokenizer, task, limit=4, batch_tokens=batch_tokens)
        k = 0
        acc, acc_norm = [], []
        for item in items:  # the metrics from the brute-force numbers
            lls = [ll for ll, _ in want[k: k + len(item.continuations())]]
            greedy = want[k][1]
            k += len(item.continuations())
            if task.kind == LAST_WORD:
                acc.append(float(greedy))
            else:
                acc.append(float(lls.index(max(lls)) == item.label))
                norm = [ll / len(c) for ll, c in zip(lls, item.choices)]
                acc_norm.append(float(norm.index(max(norm)) == item.label))
        assert result.metrics["acc"] == pytest.approx(sum(acc) / 4, abs=1e-9)
        mean = sum(acc) / 4
        assert result.stderr["acc"] == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in acc) / 3 / 4), abs=1e-9)
        if acc_norm:
            assert result.metrics["acc_norm"] == pytest.approx(sum(acc_norm) / 4, abs=1e-9)
        else:
            assert result.metrics["perplexity"] > 1
        assert result.n == 4 and result.digest == task.digest(4)


def test_one_token_choices_share_one_run_of_the_model(tiny_lm):
    """brown-genre's four one-token labels after one context: one row of the model per item, and the
    same numbers as one request at a time."""
    model, tokenizer = tiny_lm
    rows = []

    class Counting(torch.nn.Module):
        config = model.config

        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, **kwargs):
            rows.append(len(input_ids))
            return self.inner(input_ids=input_ids, **kwargs)

    items = TASKS.build("brown-genre").items(6)
    requests = [(i.context, c) for i in items for c in i.continuations()]
    got = loglikelihoods(Counting(), tokenizer, requests, batch_tokens=4096)
    assert sum(rows) == 6 and len(got) == 24
    for (ll, greedy), request in zip(got, requests):
        ref, ref_greedy = brute_force(model, tokenizer, *request)
        assert ll == pytest.approx(ref, abs=1e-4) and greedy == ref_greedy


def test_scorer_picks_the_choice_a_biased_model_favours(tiny_lm):
    """The scorer on a hand-made question where the answer is forced: a model whose logits favour
    one token picks the choice made of that token (acc and acc_norm), and greedy holds for it."""
    model, tokenizer = tiny_lm
    favourite = tokenizer.encode(" dog")[0]

    class Biased(torch.nn.Module):
        config = model.config

        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, **kwargs):
            out = self.inner(input_ids=input_ids, **kwargs)
            out.logits[..., favourite] += 100.0
            return out

    results = loglikelihoods(Biased(), tokenizer, [("Definition: a pet\nWord:", " dog"),
                                                   ("Definition: a pet\nWord:", " cat")])
    assert results[0][1] and not results[1][1] and results[0][0] > results[1][0]
