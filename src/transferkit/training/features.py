"""Run a frozen backbone once over the data and keep its features, so the head trains on a cache."""

from __future__ import annotations

import torch
from torch import nn

from .loop import Progress, autocast


class HeadOnFeatures(nn.Module):
    """The model's own head, fed cached backbone features instead of raw inputs."""

    pad_id = 0  # cached features are fixed-size vectors: nothing is ever padded
    outputs_per_token = 0  # a head's few outputs (models/base.py)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features)


@torch.no_grad()  # not inference_mode: its tensors could not feed a trainable head afterwards
def cache_features(model: nn.Module, loader, accelerator, precision: str, progress: Progress | None = None) -> list[dict]:
    """One pass of `model.forward_features` in eval mode: a list of {features, labels} items."""
    was_training = model.training
    model.eval()  # a frozen backbone runs without dropout and with fixed norm statistics
    model.to(accelerator.device)
    items = []
    for batch in loader:
        if progress:
            progress.step()
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with autocast(accelerator, precision):
            features = model.forward_features(**{k: v for k, v in batch.items() if k != "labels"})
        labels = batch["labels"].cpu()
        # Per-token features (B, T, C) keep each input's own tokens, not the batch's padding; so do
        # per-token labels (tags), not a span's (start, end, window).
        lengths = batch["attention_mask"].sum(-1).tolist() if features.ndim == 3 else [None] * len(features)
        per_token_labels = features.ndim == 3 and labels.ndim == 2 and labels.shape[1] == features.shape[1]
        for row, label, n in zip(features.float().cpu(), labels, lengths):
            if n is not None:
                row, label = row[:n], label[:n].tolist() if per_token_labels else label
            items.append({"features": row, "labels": label})  # a class index, target values, tags or a span
    model.train(was_training)
    return items
