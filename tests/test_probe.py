"""The feature-extraction probe: a head fit to the optimum of its convex problem, saved as a plain head."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from transferkit import load_config
from transferkit.data.batching import make_loader
from transferkit.methods import Stage
from transferkit.tasks import Classification
from transferkit.tasks.regress import Regression
from transferkit.training.probe import fit_probe


class Head(nn.Module):
    """A fresh linear head, started at 0: the probe's L2 pulls toward the incoming weights, so from 0
    its problem is the textbook one (ridge, L2-penalised logistic regression)."""

    def __init__(self, width: int, outputs: int):
        super().__init__()
        self.layer = nn.Linear(width, outputs)
        nn.init.zeros_(self.layer.weight)
        nn.init.zeros_(self.layer.bias)

    def forward(self, features):
        return self.layer(features)


def data(n: int, seed: int, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(scale), generator=g, dtype=torch.float64) * scale + 3.0  # far from standardised
    y = x @ (torch.arange(1.0, len(scale) + 1, dtype=torch.float64) / scale) + torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def regression_task() -> Regression:
    task = Regression()
    task.label_names, task.mean, task.std = ["y"], [0.0], [1.0]
    return task


def fit(head, task, train, validation, l2_grid):
    cfg = load_config(None, {"train.patience": None}).train
    return fit_probe(head, make_loader(train, 8, True, 0), make_loader(validation, 16, False, 0), task, Accelerator(),
                     Stage("head", None, lr=0.0, epochs=1, batch_size=8, solver="lbfgs", l2_grid=l2_grid), cfg, "fp32")  # fmt: skip


def test_probe_reaches_the_ridge_solution_and_folds_the_standardisation():
    scale = torch.tensor([0.1, 1.0, 10.0, 100.0], dtype=torch.float64)
    x, y = data(200, 0, scale)
    xv, yv = data(50, 1, scale)
    as_items = lambda x, y: [{"features": r.float(), "labels": torch.tensor([t], dtype=torch.float32)} for r, t in zip(x, y)]  # noqa: E731
    torch.manual_seed(0)
    head = Head(4, 1)
    l2 = 1e-2
    result = fit(head, regression_task(), as_items(x, y), as_items(xv, yv), (l2,))

    # Ridge on standardised features, the bias unpenalised: (Z'Z / N + l2 I) w = Z'(y - mean y) / N.
    mean, std = x.mean(0), x.std(0)
    z = (x - mean) / std
    w = torch.linalg.solve(z.T @ z / len(z) + l2 * torch.eye(4, dtype=torch.float64), z.T @ (y - y.mean()) / len(z))
    expected = z @ w + y.mean()
    with torch.no_grad():
        got = head(x.float()).squeeze(-1).double()  # raw features in: the standardisation is in the weights
    assert torch.allclose(got, expected, atol=1e-3 * expected.abs().max()), (got - expected).abs().max()
    assert result.best_step == 1 and result.best_metrics["l2"] == l2


def test_probe_logistic_optimum_has_zero_gradient_and_l2_is_chosen_on_validation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    labels = (x[:, 0] + 0.5 * x[:, 1] + 0.8 * torch.randn(300, generator=g) > 0).long()
    items = [{"features": r, "labels": int(t)} for r, t in zip(x, labels)]
    task = Classification(["a", "b"])
    torch.manual_seed(0)
    head = Head(6, 2)
    result = fit(head, task, items[:200], items[200:], (1e-4, 1e-2, 1.0))
    chosen = result.best_metrics["l2"]
    assert chosen in (1e-4, 1e-2, 1.0) and result.best_metrics["accuracy"] >= 0.75

    # KKT: at the optimum of mean cross-entropy + l2 |W|^2 on standardised features, the gradient is 0.
    train = x[:200]
    mean, std = train.mean(0), train.std(0)
    w = (head.layer.weight * std).detach().requires_grad_()  # undo the fold: the weights on standardised inputs
    b = (head.layer.bias + head.layer.weight @ mean).detach().requires_grad_()
    loss = nn.functional.cross_entropy((train - mean) / std @ w.T + b, labels[:200]) + chosen * w.pow(2).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-3 and b.grad.abs().max() < 1e-3

    # The strength kept is the one whose head validates best: refit each alone and compare.
    losses = {}
    for l2 in (1e-4, 1e-2, 1.0):
        torch.manual_seed(0)
        losses[l2] = fit(Head(6, 2), task, items[:200], items[200:], (l2,)).best_metrics
    best = max(losses, key=lambda l2: (losses[l2]["accuracy"], -losses[l2]["loss"]))
    assert chosen == best


@pytest.mark.slow
def test_freeze_defaults_are_within_3_points_of_a_logistic_probe_on_a_small_grey_image_folder(tmp_path):
    """Issue 12's yardstick: 30 Fashion-MNIST images per class at 32 px, EfficientNet-Lite0, every default,
    against a plain logistic regression (L-BFGS, L2 from four values on validation) on the same features."""
    import importlib.util
    from pathlib import Path

    from transferkit import assets, train

    for asset in (assets.MODELS["efficientnet-lite0"], assets.DATASETS["fashion-mnist"]):
        if not asset.installed:
            pytest.skip(f"{asset.name} is not installed ({asset.install})")
    spec = importlib.util.spec_from_file_location("freeze_probe", Path(__file__).parents[1] / "benchmarks" / "freeze_probe.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    folder = bench.image_folder(tmp_path / "images", per_class=30, size=32, seed=0)
    cfg = load_config(None, {"regime": "freeze", "model.name": "efficientnet-lite0", "data.name": str(folder), "output": str(tmp_path / "run")})
    run = train(cfg)
    features, _ = bench.cached_features(cfg.with_dataset_defaults())
    reference = bench.logistic_probe(features)
    assert run.test_accuracy >= reference["test_accuracy"] - 0.03, (run.test_accuracy, reference)


class TwoLayer(nn.Module):
    """BERT's head in small: a pre-trained pooler (Linear + tanh), then a classifier."""

    def __init__(self):
        super().__init__()
        self.pooler, self.classifier = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, features):
        return self.classifier(torch.tanh(self.pooler(features)))


def test_a_strong_l2_keeps_a_pretrained_two_layer_head_instead_of_killing_it():
    """The penalty pulls toward the incoming weights: at a huge L2 the head is the incoming one (in raw
    feature units), not a collapsed head whose every weight is 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g) * 3 + 1
    items = [{"features": r, "labels": int(r[0] > 1)} for r in x]
    torch.manual_seed(0)
    head = TwoLayer()
    before = [p.detach().clone() for p in head.parameters()]
    result = fit(head, Classification(["a", "b"]), items[:150], items[150:], (1e6,))
    assert result.best_step in (0, 1)
    for p, q in zip(head.parameters(), before):
        assert torch.allclose(p, q, atol=1e-4)
