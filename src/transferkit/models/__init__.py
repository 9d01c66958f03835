"""Task models: a pre-trained backbone with a task head, and one face for every modality.

A task model offers forward, forward_features / forward_head (backbone / head split),
head / head_parameters, encode (examples -> loader items), add_adapter (peft),
reinitialize and save; `TextClassifier` in text.py is the reference.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn


def load_model(cfg, label_names: list[str]) -> nn.Module:
    """The pre-trained model that `cfg` (a ModelConfig) names, with a fresh head for `label_names`."""
    from . import vision

    if vision.is_image_model(cfg):
        return vision.load_image_classifier(cfg.name, label_names, cfg.image_size, cfg.architecture)
    from .text import load_text_classifier

    return load_text_classifier(cfg.name, label_names, cfg.trust_remote_code, cfg.max_length)


def load_saved_model(folder: Path) -> nn.Module:
    """A model that `transferkit train` saved, in eval mode."""
    from . import vision

    if (folder / vision.CONFIG_FILE).is_file():
        return vision.load_saved_image_classifier(folder)
    from .text import load_saved_classifier

    return load_saved_classifier(folder)
