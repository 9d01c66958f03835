"""Full fine-tuning: every weight of the backbone and the head trains (Devlin et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import Regime, Stage


@dataclass
class Config:
    pass


def apply(model: nn.Module) -> None:
    model.requires_grad_(True)


def build(cfg) -> list[Stage]:
    t = cfg.train
    return [Stage("full", apply, t.lr, t.epochs, batch_size=t.batch_size, max_steps=t.max_steps)]


REGIME = Regime(
    "full", "every weight", build, kinds=("encoder", "causal", "image"), heads=("sequence", "lm", "token", "span"),
    requirement="trains every weight", lr=1e-4, epochs=3, batch_size=16, min_steps=150,
)  # fmt: skip
