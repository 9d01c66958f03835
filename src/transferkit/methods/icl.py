"""In-context learning: no weight changes; k labelled demonstrations in the prompt (Brown et al. 2020).

The baseline that costs nothing to train. k = 0 is zero-shot; "max" fills the model's context
(many-shot, Agarwal et al. 2024). Demonstrations are drawn with the seed, balanced across labels
(`select: random`), and their shared prefix is computed once and its cache reused for every query
(eval/scoring.py); or they are the k training examples nearest to each query by the model's own
embeddings (`select: similar`, KATE: Liu et al. 2022), which gives each query a prefix of its own:
no shared cache, one prefix pass per query (its labels share it). Calibration (eval/calibration.py:
contextual, Zhao et al. 2021; domain, Fei et al. 2023; batch, Zhou et al. 2024) corrects a small
model's lean toward some labels; `auto` picks the mode, and with `select: auto` the selection too,
that scores best on the validation split.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..eval.calibration import MODES as CALIBRATION_MODES
from .base import Regime, Stage

SELECTIONS = ("random", "similar", "auto")


@dataclass
class Config:
    shots: str = "8"
    """Demonstrations in the prompt: a number (0 is zero-shot) or max (as many as the context holds)."""
    calibrate: str = "none"
    """Calibration of the label scores (causal-LM classification, any regime): none, contextual (against
    the content-free input), domain (random in-domain words), batch (each label's mean over the queries
    scored together), or auto (the one that scores best on the validation split; `--calibrate`).
    true means auto, false none."""
    content_free: str = "N/A"
    """The content-free input that contextual calibration scores."""
    select: str = "random"
    """Which demonstrations: random (seeded, balanced across labels, one prefix shared by every query),
    similar (the k training examples nearest to each query by the model's embeddings: a prefix per
    query, no shared cache, several times slower) or auto (the better of the two on validation)."""

    def __post_init__(self):
        self.shots = str(self.shots).strip().lower()
        if self.shots != "max" and not self.shots.isdigit():
            raise UserError(f"icl.shots must be a whole number or max (got '{self.shots}')")
        self.calibrate = {"true": "auto", "false": "none", "yes": "auto", "no": "none"}.get(str(self.calibrate).strip().lower(),
                                                                                           str(self.calibrate).strip().lower())  # fmt: skip
        if self.calibrate not in (*CALIBRATION_MODES, "auto"):
            raise UserError(f"icl.calibrate must be one of {', '.join(CALIBRATION_MODES)} or auto (got '{self.calibrate}')")
        self.select = str(self.select).strip().lower()
        if self.select not in SELECTIONS:
            raise UserError(f"icl.select must be random, similar or auto (got '{self.select}')")
        if self.select != "random" and self.shots == "max":
            raise UserError(f"icl.select={self.select} draws a number of demonstrations per query; give icl.shots a number")

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


def nearest(pool: torch.Tensor, queries: torch.Tensor, k: int) -> list[list[int]]:
    """For each query (Q, C), the indices of the k pool rows (N, C) of highest cosine similarity (the
    rows are unit length), the most similar last: nearest to the query in the prompt (Liu et al. 2022)."""
    if k == 0 or len(pool) == 0:
        return [[] for _ in range(len(queries))]
    top = (queries @ pool.T).topk(min(k, len(pool)), dim=-1).indices  # (Q, k), most similar first
    return top.flip(-1).tolist()


REGIME = Regime(
    "icl", "nothing: k demonstrations in a causal LM's prompt (the free baseline)", build, kinds=("causal",), heads=("lm",),
    requirement="prompts a causal language model (try --model smollm2-135m)", prepare=prepare,
)  # fmt: skip
