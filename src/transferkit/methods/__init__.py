"""Training regimes. Each differs only in which parameters train, what is cached, and which
modules are wrapped; all of them run through the one loop in `train/loop.py`.

A regime module exports a `Config` dataclass (its own knobs) and `stages(cfg) -> list[Stage]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import UserError


@dataclass
class Stage:
    """One call of the training loop."""

    name: str
    apply: Callable[[nn.Module], None]
    """Sets requires_grad (and wraps modules) on the model; what has requires_grad is what trains."""
    lr: float
    epochs: int
    cached: bool = False
    """Train only `forward_head` on features the frozen backbone computed once."""
    layer_decay: float = 1.0
    """Learning rate multiplier per layer going down from the head (1.0: the same everywhere)."""
    batch_size: int = 16
    """Examples per optimizer step."""
    max_steps: int | None = None
    """Stop after this many optimizer steps, whatever `epochs` says."""


def freeze_all_but(model: nn.Module, trainable: list[nn.Parameter]) -> None:
    model.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)


def wrap_with_peft(make_config: Callable) -> Callable[[nn.Module], None]:
    """An `apply` that adds `peft` adapters to the model; make_config(model) -> PeftConfig.

    peft freezes the base weights and marks the adapter (and `modules_to_save`) trainable.
    """

    def apply(model) -> None:
        try:
            model.add_adapter(make_config(model))
        except ValueError as e:  # e.g. target modules that the model does not have
            first_line = str(e).strip().splitlines()[0]
            raise UserError(f"cannot add the adapters: {first_line}; check lora.targets against the model's module names") from None

    return apply


from . import freeze, full, icl, lora, prompt, scratch, staged  # noqa: E402  (the modules use Stage)

METHODS = {
    "full": full,
    "freeze": freeze,
    "lora": lora,
    "prompt": prompt,
    "staged": staged,
    "scratch": scratch,
    "icl": icl,
}

def resolve_defaults(cfg):
    """`cfg` with the regime's own learning rate, epochs and batch size written in where they were left empty."""
    from dataclasses import replace

    method, t = METHODS[cfg.regime], cfg.train
    filled = {key: getattr(t, key) if getattr(t, key) is not None else getattr(method, key.upper(), None)
              for key in ("lr", "epochs", "batch_size")}  # fmt: skip
    return replace(cfg, train=replace(t, **filled))


# Regimes that need a causal LM, and regimes a causal LM cannot run (they train a separate head).
CAUSAL_ONLY = ("icl",)
HEAD_ONLY = ("freeze", "staged")
