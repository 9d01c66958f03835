"""The training loop: accumulation equals the larger batch, early stopping, best weights kept."""

from __future__ import annotations

import copy

import torch
from accelerate import Accelerator
from torch import nn

from transferkit import load_config
from transferkit.data.batching import make_loader
from transferkit.methods import Stage
from transferkit.tasks import Classification
from transferkit.training.loop import Hooks, fit


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def forward(self, features):
        return self.layer(features)


def items(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return [{"features": row, "labels": int(row[0] > 0)} for row in x]


def train_cfg(**overrides):
    return load_config(None, {"train.patience": None, "train.warmup_ratio": 0, "train.weight_decay": 0, **overrides}).train


def test_accumulated_micro_batches_equal_one_large_batch():
    data = items(12)  # steps of 8 then 4: the short last step must be normalised by its own count
    torch.manual_seed(0)
    model = Linear()
    results = []
    for micro, accumulation in ((8, 1), (4, 2), (2, 4)):
        m = copy.deepcopy(model)
        fit(m, make_loader(data, micro, False, 0), make_loader(data, 8, False, 0), Classification(["a", "b"]), Accelerator(),
            Stage("train", None, lr=0.1, epochs=1, batch_size=micro * accumulation), train_cfg(**{"train.micro_batch_size": micro}), "fp32")
        # One validation, after the last step: it is the best, so these are the trained weights.
        results.append(m.layer.weight.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)
    assert torch.allclose(results[0], results[2], atol=1e-6)
    assert not torch.allclose(results[0], model.layer.weight)


def test_early_stopping_and_best_weights_restored():
    data = items(32)
    torch.manual_seed(0)
    model = Linear()
    initial = model.layer.weight.detach().clone()
    log = []
    # A rate of zero: no validation improves on the one before step 1, so early stopping ends it
    # after `patience` validations, and the initial weights (step 0) are the best.
    result = fit(model, make_loader(data, 8, True, 0), make_loader(data, 8, False, 0), Classification(["a", "b"]),
                 Accelerator(), Stage("train", None, lr=0.0, epochs=50, batch_size=8),
                 train_cfg(**{"train.patience": 2, "train.eval_every_steps": 1, "train.metric": "loss", "train.min_steps": 0}), "fp32", Hooks(log=log.append))
    assert result.stopped_early and result.steps == 2 and result.best_step == 0  # two without improvement
    assert torch.equal(model.layer.weight, initial)
    assert [r["step"] for r in log] == [1, 2] and all("val_loss" in r for r in log)


def test_a_stage_that_only_hurts_returns_the_incoming_weights():
    data = items(64)
    torch.manual_seed(0)
    model = Linear()
    loaders = make_loader(data, 8, True, 0), make_loader(data, 64, False, 0)
    task, cfg = Classification(["a", "b"]), train_cfg(**{"train.metric": "loss"})
    first = fit(model, *loaders, task, Accelerator(), Stage("first", None, lr=0.05, epochs=10, batch_size=8), cfg, "fp32")
    trained = model.layer.weight.detach().clone()
    # Trained toward the wrong labels: every validation is worse than the weights the first stage left, so they stay.
    flipped = make_loader([{**item, "labels": 1 - item["labels"]} for item in data], 8, True, 0)
    second = fit(model, flipped, loaders[1], task, Accelerator(), Stage("second", None, lr=0.05, epochs=3, batch_size=8), cfg, "fp32")
    assert second.best_step == 0 and second.best_metrics["loss"] == first.best_metrics["loss"]
    assert torch.equal(model.layer.weight, trained)


def test_fit_learns_a_separable_problem():
    data = items(64)
    torch.manual_seed(0)
    model = Linear()
    result = fit(model, make_loader(data, 8, True, 0), make_loader(data, 64, False, 0), Classification(["a", "b"]),
                 Accelerator(), Stage("train", None, lr=0.05, epochs=10, batch_size=8), train_cfg(), "fp32")
    assert result.best_metrics["accuracy"] >= 0.95


def test_patience_waits_for_min_steps():
    """A run cannot stop before min_steps (by default a third of its steps), however flat the start."""
    data = items(32)
    torch.manual_seed(0)
    result = fit(Linear(), make_loader(data, 8, True, 0), make_loader(data, 8, False, 0), Classification(["a", "b"]), Accelerator(),
                 Stage("train", None, lr=0.0, epochs=6, batch_size=8), train_cfg(**{"train.patience": 1, "train.eval_every_steps": 1,
                                                                                     "train.metric": "loss"}), "fp32")  # fmt: skip
    assert result.stopped_early and result.steps == 24 // 3 + 1  # 24 steps planned: patience counts from step 9
