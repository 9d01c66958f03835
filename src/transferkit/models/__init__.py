"""Model kinds, one module each, behind one face (models/base.py):

    encoder  text.py    a Hugging Face sequence model with a backbone/head split
    causal   causal.py  a causal LM whose own head answers (by verbaliser, or by generating)
    image    vision.py  a CNN with a backbone/head split (timm's forward_features / forward_head)

`kind_of` decides the kind from the model's name or files alone; `load_model` builds it with the
head its task asks for; `load_saved_model` reads back what `transferkit train` saved.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from .. import assets
from . import causal, text, vision

KINDS = {"encoder": text, "causal": causal, "image": vision}  # kind -> module with load(cfg, head, note), load_saved(folder)
SAVED_MARKERS = [(vision.CONFIG_FILE, "image"), (causal.LM_FILE, "causal")]  # a saved folder's own file -> its kind


def kind_of(model_cfg) -> str:
    """ "image", "causal" or "encoder", from the model's name, folder or file (no weights are read)."""
    location = assets.locate_model(model_cfg.name)
    if vision.is_image_model(location, model_cfg.architecture):
        return "image"
    if causal.is_causal_lm(location):
        return "causal"
    return "encoder"


def load_model(cfg, task, on_convert: Callable[[str], None] = lambda message: None) -> nn.Module:
    """The pre-trained model that `cfg` (a RunConfig) names, with the head `task` asks for."""
    return KINDS[kind_of(cfg.model)].load(cfg, task.head_config(), on_convert)


def saved_kind(folder: Path) -> str:
    return next((kind for marker, kind in SAVED_MARKERS if (folder / marker).is_file()), "encoder")


def load_saved_model(folder: Path) -> nn.Module:
    """A model that `transferkit train` saved, in eval mode; `model.task` is its task (task.json)."""
    from .. import tasks

    model = KINDS[saved_kind(folder)].load_saved(folder)
    model.task = tasks.saved(folder, model)
    return model
