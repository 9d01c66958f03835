"""Feature extraction: the backbone is frozen, runs once over the data, and only the head trains.

The backbone's features are computed a single time (in eval mode, under no_grad) and cached. On
the cache the head is fit to convergence, full batch, with L-BFGS, once per L2 strength, the best on
validation kept (training/probe.py): a linear probe done properly, where a few epochs of Adam at a
guessed rate stop before they learn on small data. The head keeps its pre-trained parts (BERT's
pooler) and starts from them. `freeze.solver=adam` trains it in the loop instead (train.lr, epochs).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Regime, Stage, freeze_all_but


@dataclass
class Config:
    solver: str = "lbfgs"
    """lbfgs: the head fit to convergence on the cache for each L2 strength in freeze.l2, the best on
    validation kept; adam: the training loop, train.lr x train.epochs."""
    l2: list[float] | None = None
    """The L2 strengths the lbfgs solver tries. Empty: 1e-4, 1e-3, 1e-2, 1e-1."""

    def __post_init__(self):
        check_solver(self.solver, self.l2, "freeze")


def check_solver(solver: str, l2: list[float] | None, section: str) -> None:
    from ..errors import UserError

    if solver not in ("lbfgs", "adam"):
        raise UserError(f"{section}.solver must be lbfgs or adam (got '{solver}')")
    if l2 is not None and (not l2 or any(not float(v) >= 0 for v in l2)):
        raise UserError(f"{section}.l2 must be a list of L2 strengths of 0 or more, e.g. 1e-3,1e-2")


def apply(model) -> None:
    freeze_all_but(model, [p for _, p in model.head_parameters()])


def build(cfg) -> list[Stage]:
    t, c = cfg.train, cfg.freeze
    return [Stage("head", apply, t.lr, t.epochs, cached=True, batch_size=t.batch_size, max_steps=t.max_steps,
                  solver=c.solver, l2_grid=tuple(float(v) for v in c.l2) if c.l2 else None)]  # fmt: skip


# lr / epochs / batch: the adam solver's (chosen on BBC News validation accuracy).
REGIME = Regime(
    "freeze", "the head only, on backbone features computed once and cached", build, kinds=("encoder", "image"),
    heads=("sequence", "token", "span"), requirement="trains a new head on cached backbone features (a causal LM answers with its own)",
    lr=1e-3, epochs=40, batch_size=32, cached_features=True,
)  # fmt: skip
