"""Tasks own their loss and their metrics, so the training loop never branches on the task."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .eval.metrics import classification_metrics


class Classification:
    """Single-label classification: cross-entropy, accuracy / macro-F1 / confusion matrix."""

    def __init__(self, label_names: list[str]):
        self.label_names = label_names

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
