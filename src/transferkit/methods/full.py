"""Full fine-tuning: every weight of the backbone and the head trains (Devlin et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from . import Stage

LR = 1e-4
EPOCHS = 3
BATCH_SIZE = 16


@dataclass
class Config:
    pass


def apply(model: nn.Module) -> None:
    model.requires_grad_(True)


def stages(cfg) -> list[Stage]:
    t = cfg.train
    return [Stage("full", apply, t.lr or LR, t.epochs or EPOCHS, batch_size=t.batch_size or BATCH_SIZE, max_steps=t.max_steps)]
