"""Optimizer parameter groups (weight decay, layer-wise rates) and learning-rate schedules."""

from __future__ import annotations

import math
import re

from torch import nn
from torch.optim.lr_scheduler import LambdaLR

# Transformer layers (encoder.layer.3.) and CNN blocks (EfficientNet's _blocks.3., blocks.3.).
_LAYER = re.compile(r"[._](?:layer|layers|blocks|h)\.(\d+)\.")


def layer_depth(name: str, num_layers: int) -> int:
    """0 for embeddings, i + 1 for transformer layer i, num_layers + 1 for anything above (the head)."""
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    if "embed" in name or "stem" in name:
        return 0
    return num_layers + 1


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Trainable parameters grouped by learning rate and weight decay.

    Biases and norm weights get no weight decay (decaying them only hurts). With layer_decay < 1
    the head trains at `lr` and layer i at lr * layer_decay ** (distance from the head).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depths = [int(m.group(1)) for n, _ in named if (m := _LAYER.search(n))]
    num_layers = max(depths) + 1 if depths else 0
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in named:
        scale = layer_decay ** (num_layers + 1 - layer_depth(name, num_layers))
        decay = 0.0 if p.ndim < 2 else weight_decay
        groups.setdefault((lr * scale, decay), []).append(p)
    return [{"params": ps, "lr": group_lr, "weight_decay": decay} for (group_lr, decay), ps in groups.items()]


def schedule(optimizer, total_steps: int, warmup_steps: int, kind: str) -> LambdaLR:
    """Linear warmup from zero, then linear or cosine decay to zero (or constant)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1 - progress)

    return LambdaLR(optimizer, factor)
