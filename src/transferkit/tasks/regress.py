"""Regression: one or several numeric targets, a linear head, MSE (or Huber) on standardised targets.

Targets are standardised with the training split's mean and standard deviation, so that one learning
rate suits ratings from -4 to 4 and prices in thousands alike; metrics are reported in the data's own
units. When the model is saved, the scaling is folded into the head's last linear layer
(W' = W * std, b' = b * std + mean), so a plain `AutoModelForSequenceClassification` load of the folder
(problem_type "regression") outputs values in the data's units, with nothing to undo.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .sequence import outputs, test_on_items

SCATTER_POINTS = 1000  # test points the report's scatter plot keeps


class Regression:
    name = "regress"
    head = "sequence"
    metric = "loss"
    stopping_metrics = ("loss", "pearson", "spearman", "r2")
    headlines = ("pearson",)
    columns = [("pearson", "Pearson", "{:.4f}"), ("spearman", "Spearman", "{:.4f}"), ("rmse", "RMSE", "{:.4f}"),
               ("mae", "MAE", "{:.4f}"), ("r2", "R²", "{:.4f}")]  # fmt: skip

    def __init__(self, cfg=None):
        self.loss_name = cfg.task.loss if cfg is not None else "mse"
        self.label_names: list[str] = []  # target names
        self.mean: list[float] = []
        self.std: list[float] = []
        self.folded = False  # True once the scaling is in the head's weights (a saved folder)

    # --- data ---------------------------------------------------------------------------------

    def read(self, data, seed: int):
        from ..data.splits import load_splits

        self.label_names = list(data.label_columns or [data.label_column])
        splits = load_splits(data, seed, read=lambda name: self.read_file(name, data), stratify=False)
        values = torch.tensor(splits.train.labels, dtype=torch.float64)  # (N, K)
        std = values.std(0, unbiased=False)
        if (std == 0).any():
            flat = self.label_names[int((std == 0).nonzero()[0])]
            raise UserError(f"target '{flat}' has the same value in every training row; regression needs targets that vary")
        self.mean, self.std = values.mean(0).tolist(), std.tolist()
        splits.label_names = self.label_names
        return splits

    def read_file(self, name: str, data):
        from ..data.splits import is_image_folder, open_table, examples_of

        if is_image_folder(name):
            raise UserError("regression reads its targets from a table; give a CSV / JSONL / Parquet file (image folders name classes)")
        table, columns = open_table(name, data)
        names = list(data.label_columns or [columns.label])
        targets = list(zip(*(target_values(table, column) for column in names)))
        return examples_of(table, columns, [list(t) for t in targets])

    def head_config(self) -> dict:
        return {"labels": self.label_names, "problem_type": "regression"}

    def targets(self, examples) -> list[torch.Tensor] | None:
        if examples.labels is None:
            return None
        mean, std = torch.tensor(self.mean), torch.tensor(self.std)
        return [(torch.tensor(y, dtype=torch.float32) - mean) / std for y in examples.labels]

    def encode(self, model, examples, train: bool = False, note=lambda message: None):
        return model.encode(examples, self.targets(examples), train=train, note=note)

    # --- loss and metrics (standardised units in the loss, the data's units in the metrics) -----------

    def loss_sum(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        per_value = (F.huber_loss if self.loss_name == "huber" else F.mse_loss)(outputs.float(), batch["labels"].float(), reduction="none")
        return per_value.mean(-1).sum()  # each example's mean over its targets, summed over the batch

    def count(self, batch: dict) -> int:
        return len(batch["labels"])

    def metric_state(self) -> list:
        return [[], []]  # predictions, targets: (N, K) each, small enough to keep for correlations

    def update(self, state: list, outputs: torch.Tensor, batch: dict) -> None:
        state[0].append(outputs.float().cpu())
        state[1].append(batch["labels"].float().cpu())

    def metrics(self, state: list) -> dict:
        predicted, true = self.to_units(torch.cat(state[0]).double()), self.to_units(torch.cat(state[1]).double())
        return regression_metrics(predicted, true, self.label_names)

    def to_units(self, standardised: torch.Tensor) -> torch.Tensor:
        return standardised * torch.tensor(self.std, dtype=standardised.dtype) + torch.tensor(self.mean, dtype=standardised.dtype)

    # --- after training, testing, predicting, saving --------------------------------------------

    def after_training(self, model, validation_items, ctx) -> dict:
        return {}

    def test(self, model, examples, items, ctx) -> tuple[dict, dict]:
        metrics, extra = test_on_items(self, model, items, ctx)
        predicted = self.values(model, items)
        true = torch.tensor(examples.labels, dtype=torch.float64)
        keep = slice(None, SCATTER_POINTS)
        extra["scatter"] = {name: {"true": true[keep, k].tolist(), "predicted": predicted[keep, k].tolist()}
                            for k, name in enumerate(self.label_names)}  # fmt: skip
        return metrics, extra

    def values(self, model, items, batch_size: int = 32) -> torch.Tensor:
        """Predicted values (N, K) in the data's units, in input order."""
        raw = outputs(model, items, batch_size).double()
        raw = raw if raw.ndim == 2 else raw[:, None]
        return raw if self.folded else self.to_units(raw)

    def scores(self, model, examples, batch_size: int = 32) -> torch.Tensor:
        """What an export is checked against: the predicted values, in the data's units."""
        return self.values(model, model.encode(examples, None), batch_size).float()

    @staticmethod
    def activation(outputs: torch.Tensor) -> torch.Tensor:
        return outputs if outputs.ndim == 2 else outputs[:, None]  # a saved folder outputs the data's units

    @staticmethod
    def same_predictions(a: torch.Tensor, b: torch.Tensor) -> int:
        return int(((a - b).abs() <= 1e-4).all(-1).sum())

    def predict(self, model, examples, ctx=None, detail: bool = False) -> dict[str, list]:
        values = self.values(model, model.encode(examples, None), ctx.batch_size if ctx is not None else 32)
        if len(self.label_names) == 1:
            return {"predicted_value": [round(v, 6) for v in values[:, 0].tolist()]}
        return {f"predicted_{name}": [round(v, 6) for v in values[:, k].tolist()] for k, name in enumerate(self.label_names)}

    def before_save(self, model) -> None:
        """Fold the scaling into the head's output layer: the saved folder predicts in the data's units."""
        if self.folded:
            return
        layers = output_layers(model, len(self.label_names))
        std, mean = torch.tensor(self.std), torch.tensor(self.mean)
        with torch.no_grad():
            for layer in layers:
                layer.weight.mul_(std[:, None].to(layer.weight))
                layer.bias.mul_(std.to(layer.bias)).add_(mean.to(layer.bias))
        self.folded = True

    def describe(self, m: dict) -> tuple[str, str | None]:
        return (f"test Pearson {m['pearson']:.4f}  Spearman {m['spearman']:.4f}  RMSE {m['rmse']:.4f}  R² {m['r2']:.4f}",
                f"{m['examples']} test examples")  # fmt: skip

    def state(self) -> dict:
        return {"labels": self.label_names, "target_mean": self.mean, "target_std": self.std, "loss": self.loss_name,
                "folded_into_head": self.folded}  # fmt: skip

    def restore(self, state: dict) -> None:
        self.label_names, self.mean, self.std = list(state["labels"]), list(state["target_mean"]), list(state["target_std"])
        self.loss_name, self.folded = state.get("loss", "mse"), state.get("folded_into_head", True)


def target_values(table, column: str) -> list[float]:
    """A target column as finite numbers, or a one-line error naming the first row that is not one."""
    values = table.column(column, "--label-column")
    numbers = []
    for i, value in enumerate(values):
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            shown = "nothing" if value is None or value == "" else f"'{value}'"
            raise UserError(f"{table.where(i)} has {shown} in target column '{column}', not a number; give every row a number")
        numbers.append(number)
    return numbers


def output_layers(model, k: int) -> list[nn.Linear]:
    """The linear layers that produce the head's k outputs (with peft, the trained copy and the original)."""
    head = model.head.modules
    layers = [m for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and m.out_features == k and any(h in name for h in head)]  # fmt: skip
    if not layers:
        raise AssertionError(f"no output layer of {k} features in the head {head}")
    return layers


def regression_metrics(predicted: torch.Tensor, true: torch.Tensor, names: list[str]) -> dict:
    """RMSE, MAE, R², Pearson and Spearman per target, and their means over the targets."""
    per_target = {}
    for k, name in enumerate(names):
        p, t = predicted[:, k], true[:, k]
        error = p - t
        total = ((t - t.mean()) ** 2).sum()
        per_target[name] = {
            "rmse": error.pow(2).mean().sqrt().item(),
            "mae": error.abs().mean().item(),
            "r2": (1 - error.pow(2).sum() / total).item() if total > 0 else 0.0,
            "pearson": _pearson(p, t),
            "spearman": _pearson(_ranks(p), _ranks(t)),
        }
    mean = {key: sum(m[key] for m in per_target.values()) / len(per_target) for key in ("rmse", "mae", "r2", "pearson", "spearman")}
    return {**mean, "per_target": per_target, "examples": len(true)}


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = (a.norm() * b.norm()).item()
    return (a @ b).item() / denominator if denominator > 0 else 0.0


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks with ties averaged (what Spearman's correlation ranks by)."""
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    for value in x.unique():  # average the ranks of tied values
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks
