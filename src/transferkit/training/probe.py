"""Feature extraction as a real probe: the head fit to convergence on the cached features.

On cached features a head costs next to nothing to train, so it is not trained for a number of
epochs at a guessed rate (which on a small validation split stops before it learns): it is fit, full
batch, with L-BFGS (strong-Wolfe line search) on standardised features, once for each L2 strength
of a small grid (strongest first, each fit warm-started from the last; the penalty pulls toward the
incoming head's weights), and the strength whose head validates best is kept (the same validation metric and
tie-break as the loop's early stopping; the incoming head competes too, so a stage that only hurts
hands back what it was given). The standardisation is then folded into the head's input layer, so
the saved model is the plain model folder it always was. The head's own parts train (BERT's pooler
as well as its classifier), from their pre-trained values.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .loop import FitResult, Hooks, Progress, _Best, evaluate, restore, snapshot

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
MAX_ITERATIONS = 100  # per L2 strength; warm-started along the path, the fits converge well within it


class Standardised(nn.Module):
    """The head, fed (features - mean) / std: what it is fit on."""

    def __init__(self, head: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.head, self.mean, self.std = head, mean, std
        self.pad_id = 0

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head((features - self.mean) / self.std)


def fit_probe(head: nn.Module, train_loader, val_loader, task, accelerator, stage, cfg, precision: str,
              hooks: Hooks | None = None) -> FitResult:  # fmt: skip
    """Fit the trainable parameters of `head` (a HeadOnFeatures) to the cached features of `train_loader`
    (full batch: the loader's items), for each L2 strength of `stage.l2_grid` (default L2_GRID); leave the
    best validated head in place, its input standardisation folded in. The same face as loop.fit."""
    hooks = hooks or Hooks()
    grid = stage.l2_grid or L2_GRID
    train_items = train_loader.dataset
    if train_items[0]["features"].ndim != 1:
        # Per-token features (tagging, spans) vary in length: the head trains in the loop instead.
        from .loop import fit

        return fit(head, train_loader, val_loader, task, accelerator, stage, cfg, precision, hooks)
    progress = hooks.progress or Progress()
    device = accelerator.device
    features = torch.stack([item["features"] for item in train_items]).to(device).float()  # (N, C)
    batch = {"labels": _labels(train_items).to(device)}
    mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
    model = Standardised(head, mean, std).to(device)
    trainable = [p for p in head.parameters() if p.requires_grad]
    weights = [p for p in trainable if p.ndim >= 2]  # L2 on weight matrices, not on biases

    def validate() -> dict:
        return evaluate(model, val_loader, task, accelerator, precision)

    result = FitResult(solver="lbfgs")
    started = time.perf_counter()
    # The incoming head competes, on raw features: the folded head of an earlier stage stays as it was.
    best = _Best(head, cfg.metric or task.metric, None, evaluate(head, val_loader, task, accelerator, precision))
    # Then its input layer is rewritten to read standardised features and compute exactly what it did
    # (the inverse of the fold), so the fit starts from the pre-trained head (BERT's pooler), and the L2
    # penalty pulls toward those weights (L2-SP, Li et al. 2018; for a fresh layer, its small random
    # init): a strong penalty keeps the pre-trained head instead of shrinking a two-layer head into the
    # dead point where every weight is 0.
    fold(head, mean, std, inverse=True)
    incoming = snapshot(head)
    anchors = [w.detach().clone() for w in weights]
    best_l2 = None
    progress.start(stage.name, len(grid))
    # Strongest L2 first, each fit starting from the one before (a regularisation path, as glmnet walks
    # it): the strongly regularised problem converges in few iterations, and each weaker one starts near
    # its own optimum, so the whole grid costs little more than one fit from scratch.
    grid = sorted(grid, reverse=True)
    for step, l2 in enumerate(grid, start=1):
        restore(head, warm if step > 1 else incoming)
        model.eval()  # no dropout: L-BFGS's line search needs the same loss for the same weights
        optimizer = torch.optim.LBFGS(trainable, lr=1.0, max_iter=MAX_ITERATIONS, history_size=20,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)  # fmt: skip

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            penalty = sum((w - a).pow(2).sum() for w, a in zip(weights, anchors))
            loss = task.loss_sum(model(features), batch) / task.count(batch) + l2 * penalty
            loss.backward()
            return loss

        loss = optimizer.step(closure).item()
        warm = snapshot(head)  # on standardised features, before the fold below
        iterations = optimizer.state[optimizer._params[0]].get("n_iter", 0)
        result.steps += iterations
        result.examples += iterations * len(features)
        val = validate()
        record = {"stage": stage.name, "step": step, "loss": loss, "lr": 0.0, "l2": l2, "iterations": iterations}
        record.update({f"val_{k}": v for k, v in val.items() if isinstance(v, float)})
        hooks.log(record)
        progress.step(loss=loss, **({"val_accuracy": val["accuracy"]} if "accuracy" in val else {}))
        before = best.score
        fold(head, mean, std)  # what is kept is the plain head: compare and keep it as it will be saved
        best.update(head, step, val)
        if best.score != before:
            best_l2 = l2
    progress.close()
    restore(head, best.state)
    result.seconds = time.perf_counter() - started
    result.best_step, result.best_metrics = best.step, {**best.metrics, **({"l2": best_l2} if best_l2 is not None else {})}
    return result


def _labels(items) -> torch.Tensor:
    labels = [item["labels"] for item in items]
    return torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels)


@torch.no_grad()
def fold(head: nn.Module, mean: torch.Tensor, std: torch.Tensor, inverse: bool = False) -> None:
    """Fold (x - mean) / std into the head's input layer: W x' + b with x' standardised is
    (W / std) x + (b - (W / std) mean). `inverse`: the layer that read x reads x' instead, computing
    the same: W' = W std, b' = b + W mean. The input layer is found by running the head once."""
    layer = input_layer(head, mean.numel())
    if inverse:
        layer.bias.add_(layer.weight @ mean.to(layer.weight))
        layer.weight.mul_(std.to(layer.weight))
        return
    weight = layer.weight / std.to(layer.weight)  # (out, C): each input column scaled by its 1 / std
    layer.bias.sub_(weight @ mean.to(layer.weight))
    layer.weight.copy_(weight)


def input_layer(head: nn.Module, width: int) -> nn.Linear:
    """The first linear layer that reads the features the head is given (BERT's pooler, EfficientNet's
    classifier, ...): whatever the head's own wiring, found by running it once on probe features."""
    seen: list[nn.Linear] = []
    probe = torch.randn(2, width, device=next(head.parameters()).device)
    hooks = []
    for module in head.modules():
        if isinstance(module, nn.Linear) and module.in_features == width:
            hooks.append(module.register_forward_pre_hook(lambda m, args: seen.append((m, args[0]))))
    try:
        was_training = head.training
        head.eval()
        head(probe)
        head.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    for module, given in seen:
        if given.reshape(-1, width).shape[0] == 2 and torch.equal(given.reshape(-1, width), probe):
            return module
    raise AssertionError("the head has no linear layer that reads its features directly")
