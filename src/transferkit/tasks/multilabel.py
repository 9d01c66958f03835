"""Multi-label classification: any number of labels per input; one sigmoid per label, binary
cross-entropy, and a decision threshold per label chosen on the validation split.

Labels come from one column, separated by `task.label_separator` ("sport|politics"; an empty cell is
no label), or from one 0/1 column per label (`data.label_columns`). The saved folder loads in plain
`AutoModelForSequenceClassification` (problem_type "multi_label_classification"); the thresholds are
in its task.json (`thresholds`), 0.5 for a label that the validation split never showed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from .sequence import eval_loader, outputs


class MultiLabel:
    name = "multilabel"
    head = "sequence"
    metric = "loss"
    stopping_metrics = ("loss", "micro_f1", "macro_f1")
    headlines = ("micro_f1",)
    columns = [("micro_f1", "micro-F1", "{:.4f}"), ("macro_f1", "macro-F1", "{:.4f}"), ("subset_accuracy", "subset accuracy", "{:.4f}")]

    def __init__(self, cfg=None):
        self.separator = cfg.task.label_separator if cfg is not None else "|"
        self.label_names: list[str] = []
        self.thresholds: list[float] = []

    # --- data ---------------------------------------------------------------------------------

    def read(self, data, seed: int):
        from ..data.splits import load_splits

        splits = load_splits(data, seed, read=lambda name: self.read_file(name, data), stratify=False)
        self.label_names = sorted({label for labels in splits.train.labels for label in labels})
        if not self.label_names:
            raise UserError("the training data has no labels at all; a multi-label task needs some rows with labels")
        for split_name, split in (("validation", splits.validation), ("test", splits.test)):
            unseen = sorted({label for labels in split.labels for label in labels} - set(self.label_names))
            if unseen:
                raise UserError(f"label '{unseen[0]}' is in the {split_name} data but never in training; add training examples "
                                f"of it or remove it from the {split_name} data")  # fmt: skip
        self.thresholds = [0.5] * len(self.label_names)
        splits.label_names = self.label_names
        return splits

    def read_file(self, name: str, data):
        from ..data.splits import examples_of, is_image_folder, open_table
        from ..data.tables import check_label_spelling

        if is_image_folder(name):
            raise UserError("multi-label data is read from a table (labels per row); give a CSV / JSONL / Parquet file")
        table, columns = open_table(name, data)
        if data.label_columns:
            sets = [set() for _ in range(len(table.rows))]
            for column in data.label_columns:
                for i, value in enumerate(table.column(column, "data.label_columns")):
                    if _flag(value, table.where(i), column):
                        sets[i].add(column)
        else:
            sets = []
            for i, value in enumerate(table.column(columns.label, "--label-column")):
                if value is not None and not isinstance(value, str):
                    raise UserError(f"{table.where(i)}: the labels in column '{columns.label}' must be text like "
                                    f"'a{self.separator}b' (got {type(value).__name__})")  # fmt: skip
                sets.append({label for label in (value or "").split(self.separator) if label != ""})
        found = sorted({label for labels in sets for label in labels})
        check_label_spelling(found, str(table.path))
        if self.label_names:  # a trained model: it has an output for these labels only
            from .classify import check_known

            check_known(found, self.label_names, name)
        return examples_of(table, columns, [sorted(labels) for labels in sets])

    def head_config(self) -> dict:
        return {"labels": self.label_names, "problem_type": "multi_label_classification"}

    def targets(self, examples) -> list[torch.Tensor] | None:
        if examples.labels is None:
            return None
        index = {name: i for i, name in enumerate(self.label_names)}
        rows = []
        for labels in examples.labels:
            row = torch.zeros(len(self.label_names))
            row[[index[label] for label in labels]] = 1.0
            rows.append(row)
        return rows

    def encode(self, model, examples, train: bool = False, note=lambda message: None):
        return model.encode(examples, self.targets(examples), train=train, note=note)

    # --- loss and metrics -------------------------------------------------------------------------

    def loss_sum(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        # Each example's mean over its labels (what a plain BCEWithLogitsLoss averages), summed over the batch.
        return F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float(), reduction="none").mean(-1).sum()

    def count(self, batch: dict) -> int:
        return len(batch["labels"])

    def metric_state(self) -> list:
        return [[], []]  # probabilities, targets

    def update(self, state: list, logits: torch.Tensor, batch: dict) -> None:
        state[0].append(logits.float().sigmoid().cpu())
        state[1].append(batch["labels"].float().cpu())

    def metrics(self, state: list) -> dict:
        return multilabel_metrics(torch.cat(state[0]), torch.cat(state[1]), self.thresholds, self.label_names)

    # --- thresholds, testing, predicting -------------------------------------------------------------

    def after_training(self, model, validation_items, ctx) -> dict:
        """Each label's threshold: the one that maximises its F1 on the validation split."""
        probabilities = outputs(model, validation_items).sigmoid()
        targets = torch.stack([item["labels"] for item in _items(validation_items)])
        self.thresholds = [best_threshold(probabilities[:, k], targets[:, k]) for k in range(len(self.label_names))]
        return {"thresholds": dict(zip(self.label_names, self.thresholds))}

    def test(self, model, examples, items, ctx) -> tuple[dict, dict]:
        from ..training.loop import evaluate

        return evaluate(model, eval_loader(items, model), self, ctx.accelerator, "fp32"), {}

    def probabilities(self, model, examples, batch_size: int = 32) -> torch.Tensor:
        return outputs(model, model.encode(examples, None), batch_size).sigmoid()

    def scores(self, model, examples, batch_size: int = 32) -> torch.Tensor:
        """What an export is checked against: each label's probability."""
        return self.probabilities(model, examples, batch_size)

    @staticmethod
    def activation(logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def same_predictions(self, a: torch.Tensor, b: torch.Tensor) -> int:
        thresholds = torch.tensor(self.thresholds)
        return int(((a >= thresholds) == (b >= thresholds)).all(-1).sum())

    def predict(self, model, examples, ctx=None, detail: bool = False) -> dict[str, list]:
        probabilities = self.probabilities(model, examples, ctx.batch_size if ctx is not None else 32)
        chosen = probabilities >= torch.tensor(self.thresholds)
        return {
            "predicted_labels": [self.separator.join(n for n, on in zip(self.label_names, row) if on) for row in chosen.tolist()],
            "probabilities": [{n: round(p, 4) for n, p in zip(self.label_names, row)} for row in probabilities.tolist()],
        }

    def before_save(self, model) -> None:
        pass

    def describe(self, m: dict) -> tuple[str, str | None]:
        return (f"test micro-F1 {m['micro_f1']:.4f}  macro-F1 {m['macro_f1']:.4f}  subset accuracy {m['subset_accuracy']:.4f}",
                f"{m['examples']} test examples")  # fmt: skip

    def state(self) -> dict:
        return {"labels": self.label_names, "thresholds": self.thresholds, "separator": self.separator}

    def restore(self, state: dict) -> None:
        self.label_names, self.thresholds = list(state["labels"]), list(state["thresholds"])
        self.separator = state.get("separator", "|")


def _items(items):
    return (items[i] for i in range(len(items)))


def _flag(value, where: str, column: str) -> bool:
    text = str(value).strip().lower() if value is not None else ""
    if text in ("1", "1.0", "true", "yes"):
        return True
    if text in ("0", "0.0", "false", "no"):
        return False
    raise UserError(f"{where} has '{value}' in label column '{column}'; a label column holds 0 or 1 (true / false)")


def best_threshold(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """The threshold that maximises F1 for one label (ties: the one nearest 0.5); 0.5 when no example has it."""
    if targets.sum() == 0:
        return 0.5
    candidates = sorted(set(probabilities.tolist()) | {0.5})
    best, best_score = 0.5, (-1.0, 0.0)
    for threshold in candidates:
        predicted = probabilities >= threshold
        tp = (predicted & (targets > 0)).sum().item()
        f1 = 2 * tp / max(predicted.sum().item() + targets.sum().item(), 1)
        score = (f1, -abs(threshold - 0.5))
        if score > best_score:
            best, best_score = threshold, score
    return float(best)


def multilabel_metrics(probabilities: torch.Tensor, targets: torch.Tensor, thresholds: list[float], names: list[str]) -> dict:
    """Micro / macro F1, subset accuracy and per-label precision / recall / F1 at the given thresholds."""
    predicted = probabilities >= torch.tensor(thresholds)
    truth = targets > 0
    tp = (predicted & truth).sum(0).double()
    fp = (predicted & ~truth).sum(0).double()
    fn = (~predicted & truth).sum(0).double()
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(tp))
    present = truth.any(0)
    micro = 2 * tp.sum() / max((2 * tp.sum() + fp.sum() + fn.sum()).item(), 1)
    return {
        "micro_f1": float(micro),
        "macro_f1": f1[present].mean().item() if present.any() else 0.0,
        "subset_accuracy": (predicted == truth).all(1).double().mean().item(),
        "per_label": {n: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
                          "support": int(truth[:, i].sum())} for i, n in enumerate(names)},  # fmt: skip
        "examples": len(targets),
    }
