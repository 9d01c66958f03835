"""Training from scratch: the same architecture with random weights, every weight trains.

The control that shows what pre-training buys (He, Girshick and Dollar 2019, "Rethinking
ImageNet Pre-training", for how close it can come given enough data and steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Regime, Stage

@dataclass
class Config:
    pass


def apply(model) -> None:
    model.reinitialize()
    model.requires_grad_(True)


def build(cfg) -> list[Stage]:
    t = cfg.train
    return [Stage("scratch", apply, t.lr, t.epochs, batch_size=t.batch_size, max_steps=t.max_steps)]


# Random weights have further to go than pre-trained ones: a higher rate and more epochs than
# fine-tuning (but a transformer trained from random weights diverges at much above 5e-4).
REGIME = Regime(
    "scratch", "every weight, from random initialisation (the control)", build, kinds=("encoder", "causal", "image"),
    heads=("sequence", "lm", "token", "span"), requirement="trains the architecture from random weights", lr=5e-4, epochs=10,
    batch_size=32, control=True, min_steps=300,
)  # fmt: skip
