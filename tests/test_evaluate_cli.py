"""prunekit eval (tasks, perplexity options), prunekit report and prune --report, the lm-eval path
(issue 11), on a tiny random Llama with SmolLM2's tokenizer."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat

import pytest
import torch

from prunekit.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    folder = tmp_path_factory.mktemp("tiny-eval") / "model"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pruned(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-pruned") / "pruned"
    assert main(["prune", "--model", str(tiny), "--out", str(out), "--quiet", "--method", "magnitude",
                 "--calibration", "brown:r", "--nsamples", "2", "--seqlen", "16"]) == 0
    return out


def run_json(argv, capsys) -> dict:
    capsys.readouterr()
    assert main([*map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_tasks_with_limit(tiny, capsys):
    out = run_json(["eval", "--model", tiny, "--tasks", "wordnet-gloss,brown-lastword", "--limit", "3"], capsys)
    assert "perplexity" not in out  # --tasks without perplexity: tasks only
    assert set(out["tasks"]) == {"wordnet-gloss", "brown-lastword"}
    assert out["tasks"]["wordnet-gloss"]["n"] == 3 and 0 <= out["tasks"]["wordnet-gloss"]["acc_norm"] <= 1
    assert out["tasks"]["brown-lastword"]["perplexity"] > 1


def test_eval_perplexity_stays_the_default_and_reports_tokens(tiny, capsys):
    argv = ["eval", "--model", tiny, "--text", "brown:r", "--seqlen", "32", "--nwindows", "3"]
    out = run_json(argv, capsys)
    assert out["windows"] == 3 and out["tokens"] == 96 and out["scored_tokens"] == 93 and out["stride"] is None
    same = run_json([*argv, "--stride", "32"], capsys)  # stride = seqlen is the default protocol
    assert same["perplexity"] == out["perplexity"]
    both = run_json([*argv, "--tasks", "perplexity,brown-continuation", "--limit", "2"], capsys)
    assert both["perplexity"] == out["perplexity"] and both["tasks"]["brown-continuation"]["n"] == 2
    capsys.readouterr()
    assert main(argv) == 0
    assert "93 tokens scored" in capsys.readouterr().out


def test_strided_perplexity_scores_each_token_once(tiny, smollm2_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from prunekit.core.data_sources import token_stream
    from prunekit.evaluate.perplexity import perplexity, token_nlls

    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 12)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    stream = token_stream(str(text), smollm2_tokenizer)
    r = perplexity(model, smollm2_tokenizer, str(text), None, 16, stride=4)
    count = 1 + (len(stream) - 16) // 4
    assert r.windows == count and r.stride == 4 and r.scored == 15 + 4 * (count - 1)
    nll = [token_nlls(model, stream[None, :16])[0]]  # by hand: window w scores its last 4 predictions
    for w in range(1, count):
        nll.append(token_nlls(model, stream[None, 4 * w: 4 * w + 16])[0, -4:])
    want = math.exp(torch.cat(nll).double().mean().item())
    assert r.perplexity == pytest.approx(want, rel=1e-6)
    whole = perplexity(model, smollm2_tokenizer, str(text), None, 16)  # --nwindows all
    assert whole.windows == len(stream) // 16 and whole.scored == whole.windows * 15


def _byte_lengths(tokenizer) -> torch.Tensor:
    """Bytes each id of a byte-level BPE tokenizer stands for: one per symbol of its token string
    (an independent count: no decoding)."""
    return torch.tensor([len(t) for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))])


def test_bits_per_byte_by_hand(tiny, smollm2_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from prunekit.core.data_sources import token_stream
    from prunekit.evaluate.perplexity import perplexity, window_nlls

    text = tmp_path / "t.txt"
    text.write_text("Un café très crème, naïve façade — l’été déjà passé. " * 8 + "The quick brown fox jumps. " * 6)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    stream = token_stream(str(text), smollm2_tokenizer)
    sizes = _byte_lengths(smollm2_tokenizer)
    assert int(sizes[stream].sum()) == len(text.read_bytes())  # the table is exact for this tokenizer

    # non-overlapping windows: each scores all but its first token (SmolLM2 puts no prefix before them)
    r = perplexity(model, smollm2_tokenizer, str(text), None, 16)
    windows = stream[: r.windows * 16].reshape(r.windows, 16)
    nll = float(window_nlls(model, windows).double().sum() * 15)
    nbytes = int(sizes[windows[:, 1:]].sum())
    assert r.nll == pytest.approx(nll, rel=1e-5) and r.bytes == nbytes
    assert r.bits_per_byte == pytest.approx(nll / math.log(2) / nbytes, rel=1e-5)
    assert r.byte_perplexity == pytest.approx(2 ** r.bits_per_byte, rel=1e-9)
    assert math.log(r.perplexity) == pytest.approx(r.nll / r.scored, rel=1e-5)  # the per-token number is unchanged

    # overlapping windows: every token after the first is scored once, its bytes counted once
    s = perplexity(model, smollm2_tokenizer, str(text), None, 16, stride=5)
    end = (s.windows - 1) * 5 + 16
    assert s.bytes == int(sizes[stream[1:end]].sum())
    assert s.nll == pytest.approx(s.scored * math.log(s.perplexity), rel=1e-6)
    assert s.bits_per_byte == pytest.approx(s.nll / math.log(2) / s.bytes, rel=1e-9)
    if end == len(stream):  # the whole text but its first token, "Un": one word fewer
        assert s.words == len(text.read_text().split()) - 1
    scored_text = smollm2_tokenizer.decode(stream[1:end].tolist())
    assert s.words == len(scored_text.split())
    assert s.word_perplexity == pytest.approx(math.exp(s.nll / s.words), rel=1e-9)

    # token tensors without a tokenizer: the NLL only
    bare = perplexity(model, None, windows, None, 16)
    assert bare.nll == pytest.approx(r.nll, rel=1e-6) and bare.bytes is None and bare.bits_per_byte is None


def test_eval_prints_bits_per_byte(tiny, capsys):
    argv = ["eval", "--model", tiny, "--text", "brown:r", "--seqlen", "32", "--nwindows", "3"]
    out = run_json(argv, capsys)
    assert out["bits_per_byte"] == pytest.approx(out["nll"] / math.log(2) / out["bytes"])
    assert out["word_perplexity"] == pytest.approx(math.exp(out["nll"] / out["words"]))
    assert 93 * 2 < out["bytes"] < 93 * 8 and 93 // 4 < out["words"] < 93  # a few bytes a token, most words a token
    capsys.readouterr()
    assert main(argv) == 0
    line = capsys.readouterr().out
    assert f"bits per byte {out['bits_per_byte']:.4f}" in line and f"word perplexity {out['word_perplexity']:.2f}" in line


@pytest.mark.slow
def test_bits_per_byte_compares_two_tokenizers():
    """SmolLM2 and Gemma 3 on the same bytes of Brown press: per token they differ by their vocabularies;
    per byte both are plausible. Gemma's windows start with <bos>, so its scored tokens are the text
    end to end: their bytes are those of the text's first tokens, exactly."""
    from prunekit.core.data_sources import source_text, token_stream
    from prunekit.evaluate.perplexity import perplexity
    from prunekit.models import load_model, load_tokenizer

    results = {}
    for name in ("smollm2-135m", "gemma3-270m"):
        model, tokenizer = load_model(name), load_tokenizer(name)
        results[name] = r = perplexity(model, tokenizer, "brown:a", 4, 256)
        assert 0.5 < r.bits_per_byte < 2.0 and r.bytes > 3 * r.scored, (name, r)
        if name == "gemma3-270m":
            body = token_stream("brown:a", tokenizer)[: 4 * 255]
            assert r.scored == len(body)
            assert source_text("brown:a").encode().startswith(tokenizer.decode(body).encode())
            assert r.bytes == len(tokenizer.decode(body).encode())
        del model
    smol, gemma = results["smollm2-135m"], results["gemma3-270m"]
    assert abs(smol.bits_per_byte - gemma.bits_per_byte) < 0.5


def test_list_tasks(capsys):
    capsys.readouterr()
    assert main(["list", "tasks"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("wordnet-gloss", "brown-continuation", "brown-lastword"))


def _png_ok(path) -> None:
    from matplotlib.image import imread

    assert path.stat().st_size > 10_000, path
    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400 and pixels.std() > 0.01  # a picture, not a blank


def test_report_of_a_prunekit_output(pruned, tiny, capsys):
    out = run_json(["report", pruned, "--baseline", tiny, "--limit", "2", "--nwindows", "1",
                    "--tasks", "perplexity,wordnet-gloss,brown-lastword"], capsys)
    folder = pruned / "report"
    assert out["page"] == str(folder / "report.md")
    page = (folder / "report.md").read_text()
    for png in ("layers.png", "quality.png"):
        assert f"]({png})" in page
        _png_ok(folder / png)
    assert "## What was run" in page and "method magnitude" in page and "wordnet-gloss v1 acc" in page
    assert "| baseline |" in page
    assert "| bits per byte (" in page and " bytes of the scored text) |" in page and "| word perplexity (" in page
    assert "- result: 50.00% of the targeted weights zero, pruning took" in page  # from prunekit.json
    assert "the folder is as large as the baseline's" in page  # unstructured zeros do not shrink the folder
    assert main(["prune", "--model", str(tiny), "--out", str(pruned), "--quiet", "--overwrite", "--method",
                 "magnitude", "--calibration", "brown:r", "--nsamples", "2", "--seqlen", "16"]) == 0  # still ours


def test_report_of_a_structured_output_has_the_speed_receipt(tiny, tmp_path, capsys):
    out = tmp_path / "structured"
    assert main(["prune", "--model", str(tiny), "--out", str(out), "--quiet", "--structure", "mlp", "--ratio", "0.5",
                 "--method", "magnitude", "--calibration", "brown:r", "--nsamples", "2", "--seqlen", "16",
                 "--option", "speed_runs=1", "--option", "speed_seqlen=32", "--option", "speed_decode=2"]) == 0
    run_json(["report", out, "--baseline", tiny, "--tasks", "none"], capsys)
    page = (out / "report" / "report.md").read_text()
    assert "## Speed receipt" in page and "![speed receipt](speed.png)" in page and "decoder blocks" in page
    assert "as large as the baseline's" not in page  # channels were removed: the folder is smaller
    _png_ok(out / "report" / "speed.png")
    data = json.loads((out / "report" / "report.json").read_text())
    mlp = [r for r in data["target"]["layers"] if "mlp" in r["name"]]
    assert mlp and all(r["shape"][0] * r["shape"][1] == r["numel"] < 32 * 64 for r in mlp)  # half the channels


def test_layer_plot_labels_the_blocks():
    from prunekit.evaluate.report import _block_starts

    names = [f"model.layers.{b}.{m}" for b in (0, 1, 10) for m in ("self_attn.q_proj", "mlp.down_proj")]
    assert _block_starts(names + ["lm_head"]) == [(0, "0"), (2, "1"), (4, "10")]
    assert _block_starts(["model.vision.layers.0.fc", "model.layers.0.fc"]) == [(0, "0"), (1, "0")]  # two stacks
    assert _block_starts(["fc1", "fc2"]) == []


def test_report_html_of_a_folder_without_manifest(tiny, tmp_path, capsys):
    out = tmp_path / "page"
    run_json(["report", tiny, "--out", out, "--format", "html", "--tasks", "none"], capsys)
    page = (out / "report.html").read_text()
    assert "<img alt='per-layer kept fraction' src='layers.png'>" in page
    assert "No prunekit.json" in page and "What was run" not in page and "Quality" not in page
    _png_ok(out / "layers.png")
    assert sorted(p.name for p in out.iterdir()) == ["layers.png", "prunekit.json", "report.html", "report.json"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask  # a folder's usual permissions, not mkdtemp's 0700


def test_prune_report_writes_the_page_into_the_output(tiny, tmp_path, monkeypatch, capsys):
    import prunekit.evaluate.report as report

    monkeypatch.setattr(report, "DEFAULT_LIMIT", 1)
    monkeypatch.setattr(report, "DEFAULT_NWINDOWS", 1)
    monkeypatch.setattr(report, "DEFAULT_TASKS", ["wordnet-gloss"])
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny), "--out", str(out), "--quiet", "--method", "magnitude",
                 "--calibration", "brown:r", "--nsamples", "2", "--seqlen", "16", "--report"]) == 0
    page = (out / "report" / "report.md").read_text()
    assert "![perplexity and accuracy](quality.png)" in page and "Baseline: " + str(tiny) in page
    _png_ok(out / "report" / "quality.png")
    assert not [p for p in tmp_path.rglob(".*tmp-*")]


# ------------------------------------------------------------------ lm-eval-harness

def test_lmeval_and_builtin_scorer_agree(tiny, smollm2_tokenizer, tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval-harness is not installed (pip install 'prunekit[lmeval]')")
    from transformers import AutoModelForCausalLM

    from prunekit.core.registry import TASKS
    from prunekit.evaluate.lmeval import export_tasks, lm_eval_name, run_lmeval
    from prunekit.evaluate.scorer import score_items

    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    tasks = [TASKS.build(name) for name in TASKS.names()]
    names = export_tasks(tasks, tmp_path, limit=12)
    theirs = run_lmeval(model, smollm2_tokenizer, names, include_path=tmp_path, include_defaults=False)
    for task in tasks:
        ours = score_items(model, smollm2_tokenizer, task, limit=12)
        got = theirs[lm_eval_name(task)]
        assert got["sample_len"] == 12
        for metric in ours.stderr:
            assert abs(got[f"{metric},none"] - ours.metrics[metric]) < 1e-8, (task.name, metric)
            assert abs(got[f"{metric}_stderr,none"] - ours.stderr[metric]) < 1e-8, (task.name, metric)
        if "perplexity" in ours.metrics:
            assert got["perplexity,none"] == pytest.approx(ours.metrics["perplexity"], rel=1e-5)


@pytest.mark.slow  # lm-eval's start-up and a structured prune: CI runs it
def test_eval_lmeval_flag_runs_exported_tasks(tiny, capsys):
    pytest.importorskip("lm_eval", reason="lm-eval-harness is not installed (pip install 'prunekit[lmeval]')")
    out = run_json(["eval", "--model", tiny, "--tasks", "wordnet-gloss", "--limit", "4", "--lmeval"], capsys)
    assert out["lmeval"]["prunekit_wordnet_gloss"]["acc,none"] == pytest.approx(out["tasks"]["wordnet-gloss"]["acc"])


@pytest.mark.slow  # lm-eval's start-up and a structured prune: CI runs it
def test_structured_folder_runs_through_lmeval(tiny, tmp_path, capsys):
    """A structured output with per-layer widths loads with prunekit and runs through lm-eval."""
    pytest.importorskip("lm_eval", reason="lm-eval-harness is not installed (pip install 'prunekit[lmeval]')")
    out = tmp_path / "narrow"
    assert main(["prune", "--model", str(tiny), "--out", str(out), "--quiet", "--structure", "mlp", "--sparsity",
                 "0.3", "--method", "magnitude", "--calibration", "brown:r", "--nsamples", "2", "--seqlen", "16",
                 "--option", "receipt=false"]) == 0
    result = run_json(["eval", "--model", out, "--tasks", "brown-lastword", "--limit", "3", "--lmeval"], capsys)
    assert result["lmeval"]["prunekit_brown_lastword"]["acc,none"] == result["tasks"]["brown-lastword"]["acc"]
    shutil.rmtree(out)
    assert not os.path.exists(out)
