"""Single-label classification: a linear head + softmax, cross-entropy, accuracy / macro-F1 / confusion matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.splits import load_splits
from ..errors import UserError
from ..eval.metrics import classification_metrics
from .sequence import outputs, test_on_items


class LabelPredictions:
    """What every single-label classifier does with its class probabilities (`self.probabilities`):
    predict, export checks, the one-line summary. Shared by the sequence head and the verbaliser."""

    def scores(self, model, examples, batch_size: int = 32) -> torch.Tensor:
        """What an export is checked against: the class probabilities."""
        return self.probabilities(model, examples, batch_size)

    @staticmethod
    def activation(logits: torch.Tensor) -> torch.Tensor:
        """The head's raw outputs (a plain load's logits) as `scores`."""
        return logits.softmax(-1)

    @staticmethod
    def same_predictions(a: torch.Tensor, b: torch.Tensor) -> int:
        return int((a.argmax(-1) == b.argmax(-1)).sum())

    def predict(self, model, examples, ctx=None, detail: bool = False) -> dict[str, list]:
        probabilities = self.probabilities(model, examples, ctx.batch_size if ctx is not None else 32)
        best, index = probabilities.max(-1)
        columns = {"predicted_label": [self.label_names[i] for i in index.tolist()], "probability": [round(p, 6) for p in best.tolist()]}
        if detail:
            columns["probabilities"] = [{n: round(p, 6) for n, p in zip(self.label_names, row)} for row in probabilities.tolist()]
        return columns

    def describe(self, m: dict) -> tuple[str, str | None]:
        return f"test accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}", f"{m['examples']} test examples"


class Classification(LabelPredictions):
    name = "classify"
    head = "sequence"
    metric = "accuracy"
    stopping_metrics = ("accuracy", "macro_f1", "loss")
    headlines = ("accuracy",)
    columns = [("accuracy", "accuracy", "{:.4f}"), ("macro_f1", "macro-F1", "{:.4f}")]

    def __init__(self, label_names: list[str] | None = None):
        self.label_names = list(label_names or [])

    # --- data ---------------------------------------------------------------------------------

    def read(self, data, seed: int):
        splits = load_splits(data, seed)
        self.label_names = splits.label_names
        return splits

    def read_file(self, path: str, data):
        """Labelled examples of one file (for `evaluate --data`), read as the training data was."""
        from ..data.splits import read_labelled

        examples = read_labelled(path, data)
        check_known(examples.labels, self.label_names, path)
        return examples

    def head_config(self) -> dict:
        return {"labels": self.label_names, "problem_type": "single_label_classification"}

    def targets(self, examples) -> list[int] | None:
        if examples.labels is None:
            return None
        index = {name: i for i, name in enumerate(self.label_names)}
        return [index[y] for y in examples.labels]

    def encode(self, model, examples, train: bool = False, note=lambda message: None):
        return model.encode(examples, self.targets(examples), train=train, note=note)

    # --- loss and metrics ---------------------------------------------------------------------

    def loss_sum(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        # Summed, not averaged: the loop divides by the real example count of the whole
        # accumulated batch, so accumulation equals one large batch even with a short last one.
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")

    def count(self, batch: dict) -> int:
        return len(batch["labels"])

    def metric_state(self) -> torch.Tensor:
        n = len(self.label_names)
        return torch.zeros(n, n, dtype=torch.long)

    def update(self, state: torch.Tensor, logits: torch.Tensor, batch: dict) -> None:
        predicted = logits.argmax(-1).cpu()
        state.index_put_((batch["labels"].cpu(), predicted), torch.ones_like(predicted), accumulate=True)

    def metrics(self, state: torch.Tensor) -> dict:
        return classification_metrics(state, self.label_names)

    # --- after training, testing, predicting -----------------------------------------------------

    def after_training(self, model, validation_items, ctx) -> dict:
        return {}

    def test(self, model, examples, items, ctx) -> tuple[dict, dict]:
        return test_on_items(self, model, items, ctx)

    def probabilities(self, model, examples, batch_size: int = 32) -> torch.Tensor:
        """(N, num_labels) class probabilities in input order, in fp32 (as any plain load computes)."""
        return outputs(model, model.encode(examples, None), batch_size).softmax(-1)


    def before_save(self, model) -> None:
        pass

    def state(self) -> dict:
        return {"labels": self.label_names}

    def restore(self, state: dict) -> None:
        self.label_names = list(state["labels"])


def check_known(labels: list[str], known: list[str], path: str) -> None:
    """Refuse labels a trained model never saw: it has no output for them."""
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise UserError(f"label '{unknown[0]}' in '{path}' was never seen in training (the model knows: {', '.join(known)})")
