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
from . import Stage, wrap_with_peft

LR = 3e-3
EPOCHS = 10
BATCH_SIZE = 16


@dataclass
class Config:
    num_virtual_tokens: int = 20
    """Length of the soft prompt, in token vectors."""

    def __post_init__(self):
        if self.num_virtual_tokens < 1:
            raise UserError(f"prompt.num_virtual_tokens must be at least 1 (got {self.num_virtual_tokens})")


def peft_config(cfg: Config, model) -> PromptTuningConfig:
    if model.modality != "text":
        raise UserError(f"regime prompt prepends soft tokens to a text model; for {model.modality}s use freeze, staged, lora, full or scratch")
    return PromptTuningConfig(
        task_type=model.peft_task_type,
        num_virtual_tokens=cfg.num_virtual_tokens,
        modules_to_save=list(model.head.modules) or None,
    )


def stages(cfg) -> list[Stage]:
    t = cfg.train
    return [
        Stage("prompt", wrap_with_peft(partial(peft_config, cfg.prompt)), t.lr or LR, t.epochs or EPOCHS, batch_size=t.batch_size or BATCH_SIZE, max_steps=t.max_steps)
    ]
