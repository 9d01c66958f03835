"""Full fine-tuning: every weight of the backbone and the head trains (Devlin et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from . import Stage

LR = 1e-4
EPOCHS = 3


@dataclass
class Config:
    pass


def apply(model: nn.Module) -> None:
    model.requires_grad_(True)


def stages(cfg) -> list[Stage]:
    return [Stage("full", apply, cfg.train.lr or LR, cfg.train.epochs or EPOCHS)]
