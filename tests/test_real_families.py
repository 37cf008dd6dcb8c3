"""The embedded Gemma 3 270M and Qwen2.5-0.5B end to end (slow; setup.sh installs and converts both).

For each: dense perplexity, one-shot Wanda through the CLI (streamed from the cached folder),
structured pruning of MLP channels, attention units and whole blocks (Gemma's single key/value
head: its attention is one unit, so heads go only with their block), each output reloaded and
evaluated. A reduced protocol keeps it short: 4 calibration windows and 2 evaluation windows of
128 tokens.
"""

import json
import math

import pytest
import torch

from prunekit.cli import main
from prunekit.core.families import adapter_for, family_for, weight_view
from prunekit.evaluate.perplexity import perplexity
from prunekit.models import load_model, load_tokenizer

pytestmark = pytest.mark.slow
FAMILIES = {"gemma3-270m": ("Gemma 3", 18, (4, 1, 256)), "qwen2.5-0.5b": ("Qwen2", 24, (14, 2, 64))}
CALIB = ["--calibration", "brown:b", "--nsamples", "4", "--seqlen", "128", "--quiet"]


def _perplexity(model, tokenizer) -> float:
    return perplexity(model, tokenizer, "brown:a", 2, 128).perplexity


@pytest.mark.parametrize("name", list(FAMILIES))
def test_embedded_family_prunes_one_shot_and_structured(name, tmp_path, capsys):
    family, n_blocks, counts = FAMILIES[name]
    model, tokenizer = load_model(name), load_tokenizer(name)
    adapter = adapter_for(model)
    assert family_for(model).name == family and len(adapter.blocks) == n_blocks
    assert adapter.attention_counts(0) == counts
    dense = _perplexity(model, tokenizer)
    assert 5 < dense < 500
    del model, adapter

    wanda = tmp_path / "wanda"
    assert main(["prune", "--model", name, "--out", str(wanda), "--method", "wanda", *CALIB]) == 0, \
        capsys.readouterr().err
    pruned = load_model(wanda)
    for module in adapter_for(pruned).linears(3).values():
        w = weight_view(module)
        assert ((w == 0).sum(dim=1) >= w.shape[1] // 2).all()  # half of every row (Wanda per-row)
    ppl = _perplexity(pruned, tokenizer)
    assert math.isfinite(ppl) and dense < ppl < 20 * dense
    del pruned

    flap = tmp_path / "flap"
    assert main(["prune", "--model", name, "--out", str(flap), "--structure", "mlp,heads,blocks", "--sparsity", "0.2",
                 "--remove", "2", "--option", "receipt=false", *CALIB]) == 0, capsys.readouterr().err
    manifest = json.loads((flap / "prunekit.json").read_text())
    result = manifest["result"]
    assert len(result["removed_blocks"]) == 2 and len(result["mlp_widths"]) == n_blocks - 2
    assert 0.15 < result["removed_fraction"] < 0.5
    if counts[1] == 1:  # one key/value head: every remaining attention is whole
        assert set(result["heads"]) == {counts[0]}
    smaller = load_model(flap)
    assert len(adapter_for(smaller).blocks) == n_blocks - 2
    with torch.no_grad():
        assert torch.isfinite(smaller(torch.tensor([[10, 20, 30, 40]])).logits).all()
    ppl = _perplexity(smaller, tokenizer)
    assert math.isfinite(ppl) and ppl > dense
