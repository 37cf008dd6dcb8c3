"""The shared table: every method x every family on tiny random models (the table's families and
decoders found by discovery)."""

import pytest
import torch

import prunekit
from prunekit.core.calibration import capture_block_inputs, run_block
from prunekit.evaluate.sparsity import satisfies_nm
from prunekit.core.io import save_pretrained
from prunekit.core.families import adapter_for, weight_view
from prunekit.core.recipe import CalibrationConfig, Recipe
from prunekit.oneshot.step import PruneStep
from prunekit.core.registry import METHODS as REGISTRY
from tests.conftest import DISCOVERED, FAMILIES, tiny_model, tiny_windows

METHODS = REGISTRY.names()


def recipe(method, **kw):
    return Recipe([PruneStep(method=method, **kw)], CalibrationConfig(nsamples=8, seqlen=32, chunk_size=3))


@pytest.mark.parametrize("family", FAMILIES + DISCOVERED)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_prunes_every_family(family, method):
    model = tiny_model(family)
    result = prunekit.prune(model, recipe(method, sparsity=0.5, pattern="per-row"), calibration=tiny_windows(),
                            progress=False)
    assert len(result.layers) >= 8  # 2 blocks x (attention + MLP linears)
    for r in result.layers:
        assert r.sparsity == pytest.approx(0.5)
    for name, module in adapter_for(model).linears(0).items():
        w = weight_view(module)
        assert ((w == 0).sum(dim=1) == w.shape[1] // 2).all(), name  # exactly half of every row


@pytest.mark.parametrize("family", FAMILIES + DISCOVERED)
def test_save_and_plain_transformers_reload_give_identical_logits(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    prunekit.prune(model, recipe("wanda", pattern="2:4"), calibration=tiny_windows(), progress=False)
    out = save_pretrained(model, tmp_path / "pruned", manifest={"note": "test"})
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tiny_windows(2, 16, seed=5)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    for module in adapter_for(reloaded).linears(1).values():
        assert satisfies_nm(weight_view(module), 2, 4)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_masks(method):
    masks = []
    for _ in range(2):
        model = tiny_model("llama")
        prunekit.prune(model, recipe(method, sparsity=0.6), calibration=tiny_windows(), progress=False)
        masks.append([weight_view(m) == 0 for m in adapter_for(model).linears(1).values()])
    assert all(torch.equal(a, b) for a, b in zip(*masks))


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_lock_step_runner_reproduces_the_plain_forward(family):
    """With nothing pruned, the block-by-block outputs equal the model's own hidden states."""
    model = tiny_model(family)
    adapter = adapter_for(model)
    windows = tiny_windows(6, 16)
    inputs = capture_block_inputs(model, adapter.blocks[0], windows, chunk_size=4)
    outputs = run_block(adapter.blocks[0], inputs, adapter.linears(0), on_ready=lambda *a: None)
    with torch.no_grad():
        hidden = model(windows, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(torch.cat(outputs), hidden, atol=1e-5, rtol=1e-5)


def test_every_layer_is_calibrated_on_pruned_upstream_outputs():
    """Each layer's statistics equal those of the *final pruned* model's inputs to that layer:
    proof that every layer saw the outputs of the layers pruned before it."""
    model = tiny_model("llama")
    seen = {}
    from prunekit.oneshot.wanda import Wanda

    original = Wanda.prune_layer

    def spy(self, weight, sparsity, pattern, ctx):
        seen[ctx.name] = ctx.stats.sq_norms.clone()
        return original(self, weight, sparsity, pattern, ctx)

    Wanda.prune_layer = spy
    try:
        prunekit.prune(model, recipe("wanda", sparsity=0.5), calibration=tiny_windows(), progress=False)
    finally:
        Wanda.prune_layer = original
    after = {}
    handles = [m.register_forward_pre_hook(lambda mod, a, n=n: after.__setitem__(
        n, after.get(n, 0) + a[0].reshape(-1, a[0].shape[-1]).pow(2).sum(0)))
        for n, m in model.named_modules() if n in seen]
    with torch.no_grad():
        for i in range(0, 8, 3):
            model(tiny_windows()[i : i + 3])
    for h in handles:
        h.remove()
    for name in seen:
        torch.testing.assert_close(seen[name], after[name], rtol=1e-4, atol=1e-4)


def test_targets_and_ignore_select_layers():
    model = tiny_model("llama")
    result = prunekit.prune(model, recipe("magnitude", targets=["re:mlp"], ignore=["re:down_proj"]), progress=False)
    names = {r.name.split(".")[-1] for r in result.layers}
    assert names == {"gate_proj", "up_proj"}
    assert (weight_view(model.model.layers[0].mlp.down_proj) != 0).all()
    assert model.lm_head.weight.count_nonzero() == model.lm_head.weight.numel()


def test_global_and_owl_allocation_average_to_target():
    model = tiny_model("llama")
    r = prunekit.prune(model, recipe("magnitude", sparsity=0.5, allocation="global"), progress=False)
    assert r.sparsity == pytest.approx(0.5, abs=1e-6)
    model = tiny_model("llama")
    r = prunekit.prune(model, recipe("wanda", sparsity=0.7, allocation="owl", owl_lambda=0.05),
                       calibration=tiny_windows(), progress=False)
    targets = {x.target for x in r.layers}
    assert len(targets) == 2  # one sparsity per block
    assert sum(targets) / 2 == pytest.approx(0.7)


def test_a_model_without_a_block_list_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="Sequential has no recognisable decoder block list.*supported: any "
                       "Hugging Face decoder whose blocks can be found, and by name Llama"):
        prunekit.prune(model, method="magnitude")


def test_explicit_block_device_gives_the_same_model():
    """``device=`` moves each block (and its inputs) there in turn; on CPU the result is identical."""
    a, b = tiny_model("llama"), tiny_model("llama")
    prunekit.prune(a, recipe("sparsegpt", sparsity=0.5), calibration=tiny_windows(), progress=False)
    prunekit.prune(b, recipe("sparsegpt", sparsity=0.5), calibration=tiny_windows(), progress=False, device="cpu")
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na
