"""Training from scratch: the same architecture with random weights, every weight trains.

The control that shows what pre-training buys (He, Girshick and Dollar 2019, "Rethinking
ImageNet Pre-training", for how close it can come given enough data and steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import Stage

# Random weights have further to go than pre-trained ones: a higher rate and more epochs than
# fine-tuning (but a transformer trained from random weights diverges at much above 5e-4).
LR = 5e-4
EPOCHS = 10
BATCH_SIZE = 32


@dataclass
class Config:
    pass


def apply(model) -> None:
    model.reinitialize()
    model.requires_grad_(True)


def stages(cfg) -> list[Stage]:
    t = cfg.train
    return [Stage("scratch", apply, t.lr or LR, t.epochs or EPOCHS, batch_size=t.batch_size or BATCH_SIZE, max_steps=t.max_steps)]
