"""Classification metrics from a confusion matrix, so evaluation never keeps all logits."""

from __future__ import annotations

import torch


def classification_metrics(confusion: torch.Tensor, label_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision / recall / F1 from a (true, predicted) count matrix."""
    confusion = confusion.double()
    true_pos = confusion.diag()
    predicted = confusion.sum(0)
    actual = confusion.sum(1)
    precision = torch.where(predicted > 0, true_pos / predicted.clamp(min=1), torch.zeros_like(true_pos))
    recall = torch.where(actual > 0, true_pos / actual.clamp(min=1), torch.zeros_like(true_pos))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    present = actual > 0  # macro-F1 over the classes that occur in this data
    return {
        "accuracy": (true_pos.sum() / confusion.sum().clamp(min=1)).item(),
        "macro_f1": f1[present].mean().item() if present.any() else 0.0,
        "per_class": {
            name: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(), "support": int(actual[i])}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion.long().tolist(),
        "examples": int(confusion.sum()),
    }
