"""Tasks own their loss and their metrics, so the training loop never branches on the task."""

from __future__ import annotations

import math

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


class LanguageModeling:
    """Next-token prediction on the tokens marked in `labels` (-100: context, not learned).

    Metrics: the mean loss per learned token, its perplexity, and next-token accuracy.
    """

    label_names: list[str] = []

    def loss_sum(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        # (B, T, V): the logits at position t predict the token at t + 1.
        return F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100, reduction="sum"
        )

    def count(self, batch: dict) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())

    def metric_state(self) -> torch.Tensor:
        return torch.zeros(3, dtype=torch.float64)  # loss sum, learned tokens, correct next tokens

    def update(self, state: torch.Tensor, logits: torch.Tensor, batch: dict) -> None:
        targets = batch["labels"][:, 1:]
        learned = targets != -100
        state[0] += self.loss_sum(logits, batch).item()
        state[1] += learned.sum().item()
        state[2] += ((logits[:, :-1].argmax(-1) == targets) & learned).sum().item()

    def metrics(self, state: torch.Tensor) -> dict:
        tokens = max(state[1].item(), 1)
        loss = state[0].item() / tokens
        return {"perplexity": math.exp(min(loss, 50)), "token_accuracy": state[2].item() / tokens, "tokens": int(state[1])}
