"""Staged fine-tuning: train the head on the frozen backbone first, then unfreeze everything at a
lower rate that shrinks layer by layer going down.

Linear probing first keeps a random head from sending large gradients into the pre-trained
features (LP-FT, Kumar et al. 2022); layer-wise rates come from ULMFiT (Howard and Ruder 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from . import Stage, freeze, full

LR = 5e-5
EPOCHS = 3
BATCH_SIZE = full.BATCH_SIZE


@dataclass
class Config:
    head_epochs: int = 20
    """Epochs of the first stage (head only, on cached features)."""
    head_lr: float = 1e-3
    """Learning rate of the first stage."""
    head_batch_size: int = freeze.BATCH_SIZE
    """Examples per optimizer step in the first stage (on cached features)."""
    layer_decay: float = 0.8
    """Each layer below the head trains at this times the rate of the layer above it."""

    def __post_init__(self):
        if self.head_epochs < 1 or not self.head_lr > 0 or self.head_batch_size < 1:
            raise UserError("staged.head_epochs, staged.head_lr and staged.head_batch_size must be positive")
        if not 0 < self.layer_decay <= 1:
            raise UserError(f"staged.layer_decay must be in (0, 1] (got {self.layer_decay})")


def stages(cfg) -> list[Stage]:
    t = cfg.train
    return [
        Stage("head", freeze.apply, cfg.staged.head_lr, cfg.staged.head_epochs, cached=True, batch_size=cfg.staged.head_batch_size),
        Stage(
            "all",
            full.apply,
            t.lr or LR,
            t.epochs or EPOCHS,
            layer_decay=cfg.staged.layer_decay,
            batch_size=t.batch_size or full.BATCH_SIZE,
            max_steps=t.max_steps,
        ),
    ]
