"""The one verb (issue 19): ``prunekit.apply`` takes what the ecosystem hands it, every step kind runs in
one session, and what it saves re-runs.

Notebook-style: each calibration input kind on the tiny Llama gives the very masks of the equivalent
list of strings (or tensor); the padding of short samples is masked out, checked against Wanda's
scores computed by hand on each sample alone."""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path
from unittest import mock

import pytest
import torch

import prunekit
from prunekit.core.data_sources import PAD, calibration_windows
from prunekit.core.errors import PrunekitError
from prunekit.core.families import adapter_for, weight_view
from tests.conftest import tiny_model

TEXTS = ["the jury said the election was well run", "stocks rose", "a bond fell back on tuesday morning",
         "rain", "the city council met again in the old hall on friday"]


class Chars:
    """A tokenizer of characters (ids 3..127), with 1 as its BOS, like a Hugging Face tokenizer's call."""

    def __call__(self, text, add_special_tokens=True, **_):
        return {"input_ids": ([1] if add_special_tokens else []) + [3 + ord(c) % 125 for c in text]}


def ids_of(texts) -> list[list[int]]:
    return [Chars()(t)["input_ids"] for t in texts]


def padded(rows, side: str = "right", pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, span], mask[i, span] = torch.tensor(r), 1
    return ids, mask


def masks_after(data, **fields) -> dict[str, torch.Tensor]:
    model = tiny_model("llama")
    prunekit.apply(model, method="wanda", sparsity=0.5, dataset=data, tokenizer=Chars(), progress=False,
                   nsamples=8, seqlen=32, **fields)
    adapter = adapter_for(model)
    return {n: weight_view(m) == 0 for i in range(len(adapter.blocks)) for n, m in adapter.linears(i).items()}


def assert_same_masks(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def reference():
    return masks_after(TEXTS)


def _inputs():
    from datasets import Dataset
    from transformers import BatchEncoding

    rows = ids_of(TEXTS)
    right, rmask = padded(rows, "right")
    left, lmask = padded(rows, "left", pad_id=7)
    encoding = BatchEncoding({"input_ids": right, "attention_mask": rmask})
    items = [{"input_ids": right[i], "attention_mask": rmask[i]} for i in range(len(rows))]
    return {
        "datasets.Dataset, text column": Dataset.from_dict({"text": TEXTS}),
        "datasets.Dataset, input_ids": Dataset.from_dict({"input_ids": rows}),
        "datasets.Dataset, left-padded input_ids + attention_mask": Dataset.from_dict(
            {"input_ids": left.tolist(), "attention_mask": lmask.tolist()}),
        "datasets.IterableDataset": Dataset.from_dict({"text": TEXTS}).to_iterable_dataset(),
        "BatchEncoding, right padding": encoding,
        "BatchEncoding, left padding": BatchEncoding({"input_ids": left, "attention_mask": lmask}),
        "DataLoader of dicts": torch.utils.data.DataLoader(items, batch_size=2),
        "list of dicts with text": [{"text": t} for t in TEXTS],
        "list of token id lists": rows,
        "dict of text": {"text": TEXTS},
    }


@pytest.mark.parametrize("kind", list(_inputs()))
def test_every_input_kind_gives_the_masks_of_the_list_of_strings(kind, reference):
    assert_same_masks(masks_after(_inputs()[kind]), reference)


def test_equal_length_samples_give_the_masks_of_the_tensor_of_their_ids():
    texts = [t * 10 for t in TEXTS]  # every sample longer than seqlen: cut to 32 tokens, no padding
    tensor = torch.tensor([r[:32] for r in ids_of(texts)])
    assert_same_masks(masks_after(texts), masks_after(tensor))


def test_padding_is_masked_out_of_attention_and_statistics():
    """Wanda's first layer by hand: ||X_j|| over the real tokens of each sample run alone (no padding),
    scores |W| * ||X_j||, the lower half of each row pruned. The padded windows give the same mask; the
    same ids with the padding calibrated as token 0 do not (so the check can fail)."""
    rows = [r[:32] for r in ids_of(TEXTS)]  # seqlen 32
    model = tiny_model("llama")
    layer = model.model.layers[0].self_attn.q_proj
    seen = []
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for r in rows:
            model(input_ids=torch.tensor([r]))
    handle.remove()
    norms = torch.cat(seen).double().pow(2).sum(0).sqrt()
    scores = layer.weight.detach().double().abs() * norms
    keep = scores.shape[1] // 2
    expected = torch.zeros_like(scores, dtype=torch.bool)
    expected.scatter_(1, scores.argsort(dim=1, stable=True)[:, :keep], True)
    assert torch.equal(masks_after(TEXTS)["model.layers.0.self_attn.q_proj"], expected)
    zero_padded = padded(rows)[0]
    assert not torch.equal(masks_after(zero_padded)["model.layers.0.self_attn.q_proj"], expected)


def test_windows_of_samples_are_padded_drawn_by_seed_and_packed_on_request():
    windows = calibration_windows(TEXTS, Chars(), nsamples=8, seqlen=16)
    assert windows.shape == (5, 16) and (windows == PAD).sum() > 0
    assert windows[3, 5:].eq(PAD).all() and windows[3, :5].tolist() == ids_of(["rain"])[0]
    three = calibration_windows(TEXTS, Chars(), nsamples=3, seqlen=16, seed=1)
    assert len(three) == 3 and torch.equal(three, calibration_windows(TEXTS, Chars(), nsamples=3, seqlen=16, seed=1))
    packed = calibration_windows(TEXTS * 4, Chars(), nsamples=4, seqlen=16, packing=True)
    assert packed.shape == (4, 16) and not (packed == PAD).any()


def test_plain_keywords_for_calibration_and_one_line_errors():
    model = tiny_model("llama")
    stream = torch.arange(3, 120).repeat(8)
    result = prunekit.prune(model, method="wanda", sparsity=0.5, nsamples=4, seqlen=16, calibration=stream,
                            progress=False)
    assert result.layers and abs(result.sparsity - 0.5) < 1e-9
    with pytest.raises(PrunekitError, match="calibration input of type builtins.object is not supported"):
        prunekit.apply(tiny_model("llama"), method="wanda", dataset=object(), progress=False)
    with pytest.raises(PrunekitError, match="not both"):
        prunekit.apply(model, {"method": "wanda"}, method="magnitude")

    class PeftModel(torch.nn.Module):
        peft_config = {"default": None}

    with pytest.raises(PrunekitError, match="PeftModel.*merge_and_unload"):
        prunekit.apply(PeftModel(), method="magnitude")


def test_two_steps_count_each_tensor_once():
    """Wanda 0.4 then magnitude 0.5 on the same layers: the result says 0.5, as the zeros counted do."""
    model = tiny_model("llama")
    recipe = [{"method": "wanda", "sparsity": 0.4}, {"method": "magnitude", "sparsity": 0.5}]
    result = prunekit.apply(model, recipe, dataset=torch.randint(3, 120, (4, 32)), progress=False)
    counted = prunekit.sparsity_report(model)
    adapter = adapter_for(model)
    weights = [weight_view(m) for i in range(len(adapter.blocks)) for m in adapter.linears(i).values()]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert abs(result.sparsity - zeros) < 1e-9 and abs(zeros - 0.5) < 1e-3
    assert counted  # the report of the same model exists


def test_a_mixed_recipe_runs_in_one_session_and_its_manifest_reruns(tmp_path):
    """structured (FLAP on the MLP) -> one-shot Wanda 2:4, in one apply; saved; prunekit.json read back as
    the recipe on a fresh copy gives the same weights."""
    windows = torch.randint(3, 120, (8, 32), generator=torch.Generator().manual_seed(0))
    recipe = [{"kind": "structured", "method": "flap", "structure": "mlp", "sparsity": 0.25, "round_to": 8},
              {"kind": "oneshot", "method": "wanda", "pattern": "2:4"}]
    model = tiny_model("llama")
    result = prunekit.apply(model, recipe, dataset=windows, progress=False)
    assert result.recipe.kinds() == ["structured", "oneshot"]
    assert result.parameters_after < result.parameters_before
    mlp = model.model.layers[0].mlp
    assert mlp.down_proj.weight.shape[1] < 128  # channels removed
    w = weight_view(mlp.down_proj).reshape(mlp.down_proj.weight.shape[0], -1, 4)
    assert ((w == 0).sum(-1) >= 2).all()  # then 2:4 on what was left
    out = prunekit.save(model, tmp_path / "out", None, result)
    again = tiny_model("llama")
    prunekit.apply(again, prunekit.load_recipe(out / "prunekit.json"), dataset=windows, progress=False)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_streamed_prune_reads_config_headers_and_tokenizer_once(smollm2_path, tmp_path):
    """``prunekit prune`` on a folder (streamed): config.json opened once, the safetensors headers read once,
    the tokenizer loaded once."""
    import prunekit.core.shards as shards
    import prunekit.models.loading as loading
    from prunekit.cli import main

    folder = Path(smollm2_path).resolve()
    counts = {"config.json": 0, "headers": 0, "tokenizer": 0}
    real_open, real_headers, real_tokenizer = builtins.open, shards.open_checkpoint, loading.load_tokenizer

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name == "config.json" and \
                Path(file).resolve().parent == folder:
            counts["config.json"] += 1
        return real_open(file, *args, **kwargs)

    def headers(*args, **kwargs):
        counts["headers"] += 1
        return real_headers(*args, **kwargs)

    def tokenizer(*args, **kwargs):
        counts["tokenizer"] += 1
        return real_tokenizer(*args, **kwargs)

    with mock.patch.object(builtins, "open", counting_open), mock.patch.object(io, "open", counting_open), \
            mock.patch.object(shards, "open_checkpoint", headers), mock.patch.object(loading, "load_tokenizer", tokenizer):
        code = main(["prune", "--model", str(folder), "--method", "wanda", "--nsamples", "2", "--seqlen", "32",
                     "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0 and (tmp_path / "out" / "prunekit.json").is_file()
    assert counts == {"config.json": 1, "headers": 1, "tokenizer": 1}


@pytest.mark.slow
def test_real_smollm2_calibrated_on_a_dataset_of_brown_documents(smollm2_path, smollm2_tokenizer):
    """A datasets.Dataset of Brown documents (one window per document) on the real SmolLM2: the same masks
    as the list of their texts, different from the packed stream, 50% per row."""
    from datasets import Dataset

    from prunekit.core.data_sources import brown_document, brown_files

    docs = [brown_document(p) for p in brown_files("a")[:6]]
    dataset = Dataset.from_dict({"text": docs, "genre": ["a"] * len(docs)})

    def masks(data, **fields):
        model = prunekit.load_model(smollm2_path)
        result = prunekit.apply(model, method="wanda", sparsity=0.5, dataset=data, tokenizer=smollm2_tokenizer,
                                nsamples=6, seqlen=128, progress=False, targets=["re:layers\\.(0|1)\\."], **fields)
        assert abs(result.sparsity - 0.5) < 1e-6
        return {n: weight_view(m) == 0 for n, m in model.named_modules() if n.endswith("proj") and
                n.startswith(("model.layers.0.", "model.layers.1."))}

    from_dataset = masks(dataset)
    assert_same_masks(from_dataset, masks(docs))
    packed = masks(docs, packing=True)
    assert any(not torch.equal(from_dataset[n], packed[n]) for n in from_dataset)


def test_delta_and_vocab_kinds_run_through_apply():
    """A delta step in a session: its base given to apply; DAREx-q calibrated on padded samples."""
    import copy

    finetuned = tiny_model("llama", seed=1)
    base = copy.deepcopy(finetuned)
    with torch.no_grad():
        for p in finetuned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    result = prunekit.apply(finetuned, kind="delta", method="darex-q", sparsity=0.9, base=base, dataset=TEXTS,
                            tokenizer=Chars(), progress=False, nsamples=4, seqlen=32)
    delta = result.steps[0]
    assert delta.delta_after < 0.2 * delta.delta_before
    with pytest.raises(PrunekitError, match="needs the base model"):
        prunekit.apply(tiny_model("llama"), kind="delta", method="dare", progress=False)
    with pytest.raises(PrunekitError, match="only training steps build their own"):
        prunekit.apply(None, method="magnitude")
