"""Training regimes. Each differs only in which parameters train, what is cached, and which
modules are wrapped; all of them run through the one loop in `train/loop.py`.

A regime module exports a `Config` dataclass (its own knobs) and `stages(cfg) -> list[Stage]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass
class Stage:
    """One call of the training loop."""

    name: str
    apply: Callable[[nn.Module], None]
    """Sets requires_grad (and wraps modules) on the model; what has requires_grad is what trains."""
    lr: float
    epochs: int
    cached: bool = False
    """Train only `forward_head` on features the frozen backbone computed once."""
    layer_decay: float = 1.0
    """Learning rate multiplier per layer going down from the head (1.0: the same everywhere)."""
    batch_size: int = 16
    """Examples per optimizer step."""
    max_steps: int | None = None
    """Stop after this many optimizer steps, whatever `epochs` says."""


def freeze_all_but(model: nn.Module, trainable: list[nn.Parameter]) -> None:
    model.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)


from . import freeze, full, lora, prompt, staged  # noqa: E402  (the modules use Stage)

METHODS = {
    "full": full,
    "freeze": freeze,
    "lora": lora,
    "prompt": prompt,
    "staged": staged,
}
