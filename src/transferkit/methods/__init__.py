"""Training regimes: each module declares one `Regime` (methods/base.py) and its own `Config` section.

REGIMES is the registry, a plain dict in the order the README and the help list them.
"""

from __future__ import annotations

from . import freeze, full, icl, lora, prompt, scratch, staged
from .base import Regime, Stage, check_fit, freeze_all_but, wrap_with_peft

REGIMES: dict[str, Regime] = {m.REGIME.name: m.REGIME for m in (full, freeze, lora, prompt, staged, scratch, icl)}

__all__ = ["REGIMES", "Regime", "Stage", "check_fit", "freeze_all_but", "resolve_defaults", "wrap_with_peft"]


def resolve_defaults(cfg, train_examples: int | None = None):
    """`cfg` with its regime's own learning rate, epochs and batch size written in where they were left empty
    (the epochs raised for small data, when the number of training examples is given)."""
    return REGIMES[cfg.regime].resolve(cfg, train_examples)
