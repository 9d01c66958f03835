"""LoRA: frozen weights plus trainable low-rank updates W + (alpha / r) B A (Hu et al. 2021).

Adapters come from `peft`. The task head trains in full and is saved with the adapter
(`modules_to_save`), so a reloaded adapter does not come back with a random head.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from peft import LoraConfig

from ..errors import UserError
from .base import Regime, Stage, wrap_with_peft

@dataclass
class Config:
    r: int = 16
    """Rank of each update."""
    alpha: float = 32.0
    """Scale: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input. Off by default: on a CPU it costs about a third of the step time."""
    targets: list[str] | None = None
    """Module names to adapt. Empty: the model's default (text: every linear layer of attention and MLP;
    EfficientNet: the 1x1 convolutions)."""

    def __post_init__(self):
        if self.r < 1:
            raise UserError(f"lora.r must be at least 1 (got {self.r})")
        if not 0 <= self.dropout < 1:
            raise UserError(f"lora.dropout must be in [0, 1) (got {self.dropout})")


def check_targets(run_cfg, model) -> None:
    """Refuse lora.targets that name no module of the model, before any work (peft says so only when applied)."""
    cfg = run_cfg.lora
    if not cfg.targets:
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in cfg.targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise UserError(f"lora.targets names '{missing[0]}', which the model has no module called; check lora.targets "
                        "against the model's module names (e.g. query, value, dense)")  # fmt: skip


def peft_config(cfg: Config, model) -> LoraConfig:
    return LoraConfig(
        task_type=model.peft_task_type,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.targets or model.lora_targets,
        modules_to_save=list(model.head.modules) or None,
    )


def build(cfg) -> list[Stage]:
    t = cfg.train
    return [Stage("lora", wrap_with_peft(partial(peft_config, cfg.lora)), t.lr, t.epochs, batch_size=t.batch_size, max_steps=t.max_steps)]


# LoRA updates start at zero and are low-rank: they need a higher rate than full fine-tuning to move as far.
REGIME = Regime(
    "lora", "low-rank adapters on every linear layer (via peft) + the head", build, kinds=("encoder", "causal", "image"),
    heads=("sequence", "lm", "token", "span"), requirement="adds low-rank adapters", lr=1e-3, epochs=3, batch_size=16,
    check_model=check_targets, min_steps=200,
)  # fmt: skip
