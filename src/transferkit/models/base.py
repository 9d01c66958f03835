"""The model-adapter protocol: one face for every kind of pre-trained model.

A kind ("encoder": a Hugging Face text encoder with a sequence head; "causal": a causal LM whose own
head answers; "image": a CNN) says how to load it with the head a task asks for, how its inputs
become loader items, where it splits into backbone and head (so a frozen backbone's features can be
cached), how adapters are added, and how it is saved so that the ecosystem loads it as it is.
Regimes and the loop use only this face; tasks use it to encode their data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class Head:
    """Which modules form the task head, and how they map backbone features to outputs."""

    modules: tuple[str, ...]
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None
    per_token: bool = False
    """It reads every token's features, (B, T, C) (token and span heads), not one vector per input (B, C)."""


class ModelAdapter(Protocol):
    kind: str
    """"encoder", "causal" or "image": what tasks and regimes declare they fit."""
    modality: str
    """What its inputs are: "text" or "image"."""
    pad_id: int
    label_names: list[str]
    peft_task_type: object
    """peft's TaskType for adapters (None: a plain module)."""
    lora_targets: object
    head: Head
    outputs_per_token: int
    """Outputs the model returns for every input token (a causal LM's vocabulary); 0 where it returns
    a few per input or per token (heads): what bounds an evaluation batch's memory."""

    def encode(self, examples, targets: list | None, train: bool = False, note=lambda message: None) -> Sequence[dict]:
        """Loader items: the model's inputs (token ids, pixels) and `targets` under "labels"."""

    def forward(self, **inputs) -> torch.Tensor:
        """Outputs of the task head: (B, num_outputs), or (B, T, V) for a causal LM."""

    def forward_features(self, **inputs) -> torch.Tensor:
        """What the backbone gives the head, (B, C), or (B, T, C) for a per-token head: computed once and
        cached by feature extraction."""

    def forward_head(self, features: torch.Tensor) -> torch.Tensor: ...

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]: ...

    def add_adapter(self, peft_config) -> None:
        """Wrap the network with peft adapters (LoRA, soft prompts)."""

    def reinitialize(self) -> None:
        """Random weights in the same architecture (the scratch control)."""

    def save(self, folder: Path) -> None:
        """A folder the ecosystem loads as it is (Hugging Face model folder, PEFT adapter, safetensors)."""
