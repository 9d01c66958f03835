"""In-context learning: no weight changes; k labelled demonstrations in the prompt (Brown et al. 2020).

The baseline that costs nothing to train. k = 0 is zero-shot; "max" fills the model's context
(many-shot, Agarwal et al. 2024). Demonstrations are drawn with the seed, balanced across labels.
The shared prefix is computed once and its cache reused for every query (eval/scoring.py), and
contextual calibration (Zhao et al. 2021) corrects a small model's lean toward some labels.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError
from .base import Regime, Stage


@dataclass
class Config:
    shots: str = "8"
    """Demonstrations in the prompt: a number (0 is zero-shot) or max (as many as the context holds)."""
    calibrate: bool = False
    """Contextual calibration: divide out each label's score on a content-free input."""
    content_free: str = "N/A"
    """The content-free input that calibration scores."""

    def __post_init__(self):
        self.shots = str(self.shots).strip().lower()
        if self.shots != "max" and not self.shots.isdigit():
            raise UserError(f"icl.shots must be a whole number or max (got '{self.shots}')")

    @property
    def k(self) -> int | None:
        """The number of demonstrations, None for as many as fit."""
        return None if self.shots == "max" else int(self.shots)


def build(cfg) -> list[Stage]:
    return []  # nothing trains


def prepare(model, task, splits, cfg) -> None:
    """Nothing trains: the task puts demonstrations from the training split into the model's prompt."""
    model.trained = False
    model.requires_grad_(False)
    task.choose_demonstrations(model, splits, cfg)


def choose_demonstrations(labels: list, k: int | None, seed: int, fits: Callable[[list[int]], bool]) -> list[int]:
    """Indices of k training examples, balanced across labels (round robin over shuffled classes),
    in a seeded order; with k None, as many as `fits` accepts."""
    if k is not None and k > len(labels):
        raise UserError(f"icl.shots={k} is more than the {len(labels)} training examples; lower it or use shots=max")
    rng = random.Random(seed)
    by_class: dict = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    queues = [rng.sample(indices, len(indices)) for _, indices in sorted(by_class.items(), key=lambda kv: str(kv[0]))]
    rng.shuffle(queues)
    order = [queue[depth] for depth in range(max(map(len, queues))) for queue in queues if depth < len(queue)]
    if k is not None:
        chosen = order[:k]
    else:
        chosen = []
        for index in order:
            if not fits(chosen + [index]):
                break
            chosen.append(index)
    rng.shuffle(chosen)
    return chosen


REGIME = Regime(
    "icl", "nothing: k demonstrations in a causal LM's prompt (the free baseline)", build, kinds=("causal",), heads=("lm",),
    requirement="prompts a causal language model (try --model smollm2-135m)", prepare=prepare,
)  # fmt: skip
