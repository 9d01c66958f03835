"""Prompt tuning: trainable soft-prompt vectors before every input, the model frozen (Lester et al. 2021).

Soft prompts come from `peft`; the task head trains as well (it is new, so it has to). Known to
be weak on small models: Lester et al. show it closing the gap to fine-tuning only at billions of
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from peft import PromptTuningConfig

from ..errors import UserError
from .base import Regime, Stage, wrap_with_peft

@dataclass
class Config:
    num_virtual_tokens: int = 20
    """Length of the soft prompt, in token vectors."""

    def __post_init__(self):
        if self.num_virtual_tokens < 1:
            raise UserError(f"prompt.num_virtual_tokens must be at least 1 (got {self.num_virtual_tokens})")


def peft_config(cfg: Config, model) -> PromptTuningConfig:
    return PromptTuningConfig(
        task_type=model.peft_task_type,
        num_virtual_tokens=cfg.num_virtual_tokens,
        modules_to_save=list(model.head.modules) or None,
    )


def build(cfg) -> list[Stage]:
    t = cfg.train
    return [Stage("prompt", wrap_with_peft(partial(peft_config, cfg.prompt)), t.lr, t.epochs, batch_size=t.batch_size, max_steps=t.max_steps)]


REGIME = Regime(
    "prompt", "soft-prompt vectors (via peft) + the head; the backbone frozen", build, kinds=("encoder", "causal"),
    heads=("sequence", "lm", "token"), requirement="prepends soft tokens to a text model", lr=3e-3, epochs=10, batch_size=16, min_steps=300,
)  # fmt: skip
