"""Task models: a pre-trained backbone with a task head, and one face for every modality.

A task model offers forward, forward_features / forward_head (backbone / head split),
head / head_parameters, encode (examples -> loader items), add_adapter (peft),
reinitialize and save; `TextClassifier` in text.py is the reference, `CausalLM` in causal.py
the decoder-only one (its pre-trained LM head answers, by verbaliser or by generation).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..errors import UserError


def load_model(cfg, label_names: list[str], on_convert: Callable[[str], None] = lambda message: None) -> nn.Module:
    """The pre-trained model that `cfg` (a RunConfig) names, ready for its task and `label_names`."""
    from . import vision
    from .causal import is_causal_lm, label_prompt, load_causal_lm

    m = cfg.model
    if vision.is_image_model(m):
        return vision.load_image_classifier(m.name, label_names, m.image_size, m.architecture)
    if is_causal_lm(m.name):
        prompt = label_prompt(label_names, cfg.lm.verbalisers, cfg.lm.instruction) if cfg.task == "classify" else None
        return load_causal_lm(m.name, cfg.task, prompt, m.max_length, m.trust_remote_code, on_convert, m.attention_dropout)
    if cfg.task == "generate":
        raise UserError(f"task generate needs a causal language model; '{m.name}' is an encoder (try --model smollm2-135m)")
    from .text import load_text_classifier

    return load_text_classifier(m.name, label_names, m.trust_remote_code, m.max_length, m.attention_dropout)


def load_saved_model(folder: Path) -> nn.Module:
    """A model that `transferkit train` saved, in eval mode."""
    from . import vision
    from .causal import LM_FILE, load_saved_causal_lm

    if (folder / vision.CONFIG_FILE).is_file():
        return vision.load_saved_image_classifier(folder)
    if (folder / LM_FILE).is_file():
        return load_saved_causal_lm(folder)
    from .text import load_saved_classifier

    return load_saved_classifier(folder)
