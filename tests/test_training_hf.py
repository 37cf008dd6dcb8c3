import pytest
import torch
from torch import nn

from prunekit.training.pruner import Pruner
from prunekit.training.schedules import CubicSparsity

transformers = pytest.importorskip("transformers")


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x, labels=None):
        logits = self.body(x)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def test_trainer_callback_prunes_on_schedule_and_masks_survive_adamw(tmp_path):
    from prunekit.training.hf_callback import PruningCallback

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(10, generator=g), "labels": int(torch.randint(0, 3, (1,), generator=g))}
            for _ in range(128)]
    model = TinyClassifier()
    sched = CubicSparsity(0.0, 0.75, start=2, end=12, frequency=2)
    pruner = Pruner(model, sched)
    seen = []

    class Watch(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append((state.global_step - 1, pruner.sparsity()))

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=16, learning_rate=1e-2,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[PruningCallback(pruner), Watch()])
    trainer.train()
    assert len(seen) == 20
    for step, measured in seen:
        assert measured == pytest.approx(sched(step), abs=2e-3), step
    for name, w in pruner.weights.items():
        assert torch.all(w[pruner.masks[name]] == 0)
        state = trainer.optimizer.state[w]
        assert torch.all(state["exp_avg"][pruner.masks[name]] == 0)
    assert pruner.sparsity() == pytest.approx(0.75, abs=2e-3)
