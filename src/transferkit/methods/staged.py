"""Staged fine-tuning: train the head on the frozen backbone first, then unfreeze everything at a
lower rate that shrinks layer by layer going down.

Linear probing first keeps a random head from sending large gradients into the pre-trained
features (LP-FT, Kumar et al. 2022); layer-wise rates come from ULMFiT (Howard and Ruder 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from . import freeze, full
from .base import Regime, Stage



@dataclass
class Config:
    head_epochs: int = 20
    """Epochs of the first stage (head only, on cached features)."""
    head_lr: float = 1e-3
    """Learning rate of the first stage."""
    head_batch_size: int | None = None
    """Examples per optimizer step in the first stage (on cached features). Empty: train.batch_size if set, else 32."""
    head_solver: str = "lbfgs"
    """The first stage's solver, as freeze.solver: lbfgs (the head fit to convergence on the cache, the L2
    strength chosen on validation) or adam (staged.head_lr x staged.head_epochs)."""
    layer_decay: float = 0.8
    """Each layer below the head trains at this times the rate of the layer above it."""

    def __post_init__(self):
        if self.head_epochs < 1 or not self.head_lr > 0 or (self.head_batch_size is not None and self.head_batch_size < 1):
            raise UserError("staged.head_epochs, staged.head_lr and staged.head_batch_size must be positive")
        freeze.check_solver(self.head_solver, None, "staged (head_solver)")
        if not 0 < self.layer_decay <= 1:
            raise UserError(f"staged.layer_decay must be in (0, 1] (got {self.layer_decay})")


def build(cfg) -> list[Stage]:
    t, c = cfg.train, cfg.staged
    head_batch = c.head_batch_size or t.batch_size
    return [
        Stage("head", freeze.apply, c.head_lr, c.head_epochs, cached=True, batch_size=head_batch, max_steps=t.max_steps,
              solver=c.head_solver),
        Stage("all", full.apply, t.lr, t.epochs, layer_decay=c.layer_decay, batch_size=t.batch_size, max_steps=t.max_steps),
    ]


def fill(cfg):
    """The head stage's batch size is filled in too: train.batch_size when set, else freeze's 32."""
    from dataclasses import replace

    if cfg.staged.head_batch_size is None:
        head = cfg.train.batch_size or freeze.REGIME.batch_size
        cfg = replace(cfg, staged=replace(cfg.staged, head_batch_size=head))
    return cfg


REGIME = Regime(
    "staged", "the head on cached features, then every layer at layer-wise rates", build, kinds=("encoder", "image"),
    heads=("sequence", "token", "span"), requirement="trains a new head on cached backbone features first (a causal LM answers with its own)",
    lr=5e-5, epochs=3, batch_size=full.REGIME.batch_size, cached_features=True, fill=fill, min_steps=150,
)  # fmt: skip
