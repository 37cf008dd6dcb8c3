import pytest
import torch
from torch import nn

from prunekit.training.pruner import prune_once
from prunekit.training.recovery import (
    IGNORE,
    CausalLMLoss,
    MaskedLoRA,
    add_masked_lora,
    answer_prompts,
    finetune,
    label_loss,
    merge_lora,
    perp_recover,
)
from prunekit.zoo import ResNet


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4))


def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 8, 8, generator=g)
    return x, (x[:, 0, :4].mean((1, 2)) > 0).long() + 2 * (x[:, 0, 4:].mean((1, 2)) > 0).long()


def test_lora_merge_keeps_pruned_weights_at_zero():
    model = make_model()
    pruner = prune_once(model, 0.7)
    before = {n: w.detach().clone() for n, w in pruner.weights.items()}
    add_masked_lora(model, pruner.masks, rank=3)
    with torch.no_grad():  # make B A dense and non-zero everywhere, including pruned positions
        for m in model.modules():
            if isinstance(m, MaskedLoRA):
                m.lora_b.normal_()
    x, _ = make_data()
    model.eval()
    out_adapted = model(x)
    assert merge_lora(model) == 3
    assert not any(isinstance(m, MaskedLoRA) for m in model.modules())
    torch.testing.assert_close(model(x), out_adapted, rtol=1e-4, atol=1e-4)  # merge is exact
    for name, w in pruner.weights.items():
        mask = pruner.masks[name]
        assert torch.all(w[mask] == 0), name
        assert not torch.equal(w[~mask], before[name][~mask]), name  # the adapters did change kept weights


def test_perp_trains_only_biases_and_norms_without_lora():
    model = make_model()
    pruner = prune_once(model, 0.6)
    weights = {n: w.detach().clone() for n, w in pruner.weights.items()}
    bias = model[4].bias.detach().clone()
    bn = model[1].weight.detach().clone()
    x, y = make_data()
    perp_recover(model, pruner, x, y, epochs=2, lr=1e-2, batch_size=32)
    for name, w in pruner.weights.items():
        assert torch.equal(w, weights[name]), name
    assert not torch.equal(model[4].bias, bias)
    assert not torch.equal(model[1].weight, bn)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again


def test_perp_with_lora_changes_kept_weights_only():
    model = make_model()
    pruner = prune_once(model, 0.6)
    x, y = make_data()
    perp_recover(model, pruner, x, y, epochs=2, lr=1e-2, lora_rank=2, batch_size=32)
    assert not any(isinstance(m, MaskedLoRA) for m in model.modules())
    assert abs(pruner.sparsity() - 0.6) < 0.01
    for name, w in pruner.weights.items():
        assert torch.all(w[pruner.masks[name]] == 0), name


def test_finetune_keeps_masks_and_improves_loss():
    model = make_model()
    pruner = prune_once(model, 0.8)
    x, y = make_data()
    loss0 = nn.functional.cross_entropy(model(x), y).item()
    finetune(model, pruner, x, y, epochs=5, lr=0.05, batch_size=32)
    assert nn.functional.cross_entropy(model(x), y).item() < loss0
    assert abs(pruner.sparsity() - 0.8) < 0.01


def test_resnet_prunes_and_recovers():
    torch.manual_seed(0)
    model = ResNet(depth=8, width=4)
    pruner = prune_once(model, 0.5, scope="global", floor=0.1)
    assert len(pruner.weights) == 1 + 6 + 2 + 1  # stem, 3x2 block convs, 2 projections, head
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    perp_recover(model, pruner, x, y, epochs=1, lora_rank=2, batch_size=32)
    assert abs(pruner.sparsity() - 0.5) < 0.01
    assert model(x[:2]).shape == (2, 10)


def tiny_llama(vocab: int = 50):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_label_loss_is_the_mean_negative_log_likelihood_of_the_scored_tokens():
    """Against the full logits read by hand; tokens after the last scored one change nothing."""
    model = tiny_llama()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (3, 12), generator=g)
    labels = torch.full_like(ids, IGNORE)
    scored = [(0, 5), (0, 6), (1, 11), (2, 3)]  # (row, position of a scored token)
    for r, t in scored:
        labels[r, t] = ids[r, t]
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
        want = sum(-float(torch.log_softmax(logits[r, t - 1], -1)[ids[r, t]]) for r, t in scored) / len(scored)
        assert float(label_loss(model, ids, labels)) == pytest.approx(want, abs=1e-5)
        other = ids.clone()
        other[2, 4:] = 0  # after row 2's label: it cannot see them
        labels[1, 11] = IGNORE  # the last scored column is now 6: columns 7-11 are not run
        want = sum(-float(torch.log_softmax(logits[r, t - 1], -1)[ids[r, t]]) for r, t in scored[:2] + scored[3:]) / 3
        assert float(label_loss(model, other, labels)) == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="no scored label"):
        label_loss(model, ids, torch.full_like(ids, IGNORE))
    with pytest.raises(ValueError, match="shape"):
        label_loss(model, ids, labels[:, :5])


def test_causal_lm_loss_trains_the_label_only_with_labels():
    """With labels, one step of the loop moves the loss of the labelled token (and no callback falls back
    to plain cross-entropy); without, it is the model's own next-token loss."""
    from prunekit.core.train import Batch, TrainConfig, train

    model = tiny_llama()
    ids = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(2))
    labels = torch.full_like(ids, IGNORE)
    labels[:, 7] = 3  # every row should end with token 3
    batch = Batch(torch.arange(4), ids, None, 0)
    with torch.no_grad():
        assert float(CausalLMLoss().loss(type("S", (), {"model": model})(), batch)) == pytest.approx(
            float(model(input_ids=ids, labels=ids).loss))
        before = float(label_loss(model, ids, labels))
    train(model, (ids, labels), TrainConfig(steps=20, batch_size=4, optimizer="adamw", lr=1e-2, weight_decay=0.0),
          [CausalLMLoss()])
    with torch.no_grad():
        assert float(label_loss(model, ids, labels)) < before / 2


def test_answer_prompts_hold_the_scorers_tokens(smollm2_tokenizer):
    from prunekit.evaluate.scorer import encode_pair
    from prunekit.evaluate.tasks.base import Item

    items = [Item(context="Passage: The council met.\nGenre:", choices=("news", "fiction"), label=0),
             Item(context="Q: a longer question here?\nA:", choices=("yes", "no way"), label=1)]
    ids, labels = answer_prompts(smollm2_tokenizer, items)
    assert ids.shape == labels.shape and ids.shape[0] == 2
    for row, item in enumerate(items):
        head, tail = encode_pair(smollm2_tokenizer, item.context, " " + item.choices[item.label])
        n = len(head) + len(tail)
        assert ids[row, :n].tolist() == head + tail
        assert labels[row, len(head): n].tolist() == tail
        assert (labels[row, : len(head)] == IGNORE).all() and (labels[row, n:] == IGNORE).all()
        assert (ids[row, n:] == smollm2_tokenizer.eos_token_id).all()
    assert smollm2_tokenizer.decode(ids[1][labels[1] != IGNORE]) == " no way"
