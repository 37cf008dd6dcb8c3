"""The real embedded model: SmolLM2-135M on real Brown text (slow; runs in CI)."""

import pytest
import torch

import prunekit
from prunekit.core.data_sources import calibration_windows, evaluation_windows
from prunekit.evaluate.perplexity import window_nlls
from prunekit.core.masks import parse_pattern
from prunekit.core.stats import LayerStats
from prunekit.oneshot.base import LayerContext
from prunekit.core.families import adapter_for, weight_view
from prunekit.models import load_model
from prunekit.core.registry import METHODS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(smollm2_path):
    return load_model(smollm2_path)


@pytest.fixture(scope="module")
def calib(smollm2_tokenizer):
    return calibration_windows("brown", smollm2_tokenizer, nsamples=8, seqlen=256, seed=0)


def layer_inputs(model, name, windows):
    module = dict(model.named_modules())[name]
    xs = []
    handle = module.register_forward_pre_hook(lambda m, a: xs.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for i in range(0, len(windows), 4):
            model(windows[i : i + 4])
    handle.remove()
    return module, torch.cat(xs)


@pytest.mark.parametrize("layer", ["model.layers.5.self_attn.q_proj", "model.layers.12.mlp.down_proj"])
def test_reconstruction_error_sparsegpt_below_wanda_below_magnitude(model, calib, layer):
    module, x = layer_inputs(model, layer, calib)
    stats = LayerStats(x.shape[1], want_hessian=True)
    stats.add(x, samples=len(calib))
    w = weight_view(module).clone()
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        new = w.clone()
        mask = METHODS.build(method).prune_layer(new, 0.5, parse_pattern("per-row"), LayerContext(layer, stats))
        new[mask] = 0
        assert ((new == 0).sum(dim=1) >= w.shape[1] // 2).all()
        errors[method] = (x @ (w - new).T).norm().item()
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_wanda_end_to_end_and_plain_reload(model, calib, smollm2_tokenizer, smollm2_path, tmp_path):
    from transformers import AutoModelForCausalLM

    ev = evaluation_windows("brown:a", smollm2_tokenizer, nwindows=2, seqlen=256)
    dense_nll = window_nlls(model, ev).mean()
    pruned = load_model(smollm2_path)
    result = prunekit.prune(pruned, method="wanda", sparsity=0.5, calibration=calib, progress=False)
    assert len(result.layers) == 30 * 7
    for m in adapter_for(pruned).linears(17).values():
        w = weight_view(m)
        assert ((w == 0).sum(dim=1) == w.shape[1] // 2).all()
    assert torch.equal(pruned.lm_head.weight, model.lm_head.weight)  # embeddings and lm_head untouched
    pruned_nll = window_nlls(pruned, ev).mean()
    # 50% Wanda costs well under a doubling of NLL-perplexity ratio (magnitude is ~15x on this model)
    assert torch.exp(pruned_nll - dense_nll) < 3.0
    out = prunekit.save_pretrained(pruned, tmp_path / "wanda50", smollm2_tokenizer, source=str(smollm2_path))
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(pruned(ev[:1]).logits, reloaded(ev[:1]).logits)


def test_demo_prunes_evaluates_and_saves_a_reloadable_model(smollm2_path, tmp_path, capsys):
    """The README's first command, on fewer windows: dense vs pruned perplexity, 50% sparsity, saved."""
    import json

    from transformers import AutoModelForCausalLM

    from prunekit.cli import main
    from prunekit.core.io import read_manifest

    out = tmp_path / "demo"
    assert main(["demo", "--nsamples", "4", "--nwindows", "2", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert 20 < report["dense_perplexity"] < report["pruned_perplexity"] < 50 * report["dense_perplexity"]
    assert read_manifest(out)["demo"] is True
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    down = reloaded.model.layers[3].mlp.down_proj.weight
    assert (down == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)


def test_brown_genre_training_loss_is_the_scorers_answer_loglikelihood(model, smollm2_tokenizer):
    """The classifier pair's objective on real SmolLM2: the label-only loss of brown-genre prompts
    (answer_prompts + label_loss, padded batch) is minus the mean log-likelihood the scorer gives their
    right labels, each item alone."""
    from prunekit.core.registry import TASKS
    from prunekit.evaluate.scorer import loglikelihoods
    from prunekit.training.recovery import answer_prompts, label_loss

    items = TASKS.build("brown-genre", {"split": "train"}).items(8)
    ids, labels = answer_prompts(smollm2_tokenizer, items)
    with torch.no_grad():
        loss = float(label_loss(model, ids, labels))
    scored = loglikelihoods(model, smollm2_tokenizer, [(i.context, " " + i.choices[i.label]) for i in items])
    assert loss == pytest.approx(-sum(ll for ll, _ in scored) / len(items), abs=1e-3)
    assert 0 < loss < 10
