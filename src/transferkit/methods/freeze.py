"""Feature extraction: the backbone is frozen, runs once over the data, and only the head trains.

The backbone's features are computed a single time (in eval mode, under no_grad) and cached;
every epoch after that costs only the head. The head keeps its pre-trained parts (BERT's pooler)
and starts from them, which beats a fresh linear layer on the same features.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Regime, Stage, freeze_all_but


@dataclass
class Config:
    pass


def apply(model) -> None:
    freeze_all_but(model, [p for _, p in model.head_parameters()])


def build(cfg) -> list[Stage]:
    t = cfg.train
    return [Stage("head", apply, t.lr, t.epochs, cached=True, batch_size=t.batch_size, max_steps=t.max_steps)]


# The head is small and its inputs are cached, so many epochs at a higher rate are cheap.
# Chosen on BBC News validation accuracy (a sweep of rate, epochs and batch size).
REGIME = Regime(
    "freeze", "the head only, on backbone features computed once and cached", build, kinds=("encoder", "image"),
    heads=("sequence", "token", "span"), requirement="trains a new head on cached backbone features (a causal LM answers with its own)",
    lr=1e-3, epochs=40, batch_size=32, cached_features=True,
)  # fmt: skip
