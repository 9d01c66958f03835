"""The task protocol: what a task is, written down once.

A task owns everything that differs between, say, classification and regression: how its data is
read and split, the head it asks of the model, its loss and metrics, how it tests, how it predicts
on new data, and what a saved model folder needs to predict the same again (task.json). The
training loop, the regimes and the model kinds never ask which task they are running.

Tasks are registered per (model kind, task name) in tasks/__init__.py, so a new one is a class and
a line in that dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

TASK_FILE = "task.json"  # beside the weights: the task's name and what it needs to predict again


@dataclass
class Context:
    """What a task needs of the run while it tests or predicts."""

    cfg: object  # RunConfig
    accelerator: object
    precision: str
    progress: object  # training.loop.Progress
    batch_size: int = 32
    """Inputs per forward pass when predicting."""


class Task(Protocol):
    name: str
    """As `--task` names it: classify, regress, multilabel, generate, ..."""
    head: str
    """The head it trains, which regimes declare they can train: "sequence" (one vector per input to
    a new head), "lm" (the model's own language-model head), "token", "span"."""
    metric: str
    """The validation metric that picks the best checkpoint when train.metric is left empty."""
    stopping_metrics: tuple[str, ...]
    """What train.metric may name for this task (its validation metrics)."""
    headlines: tuple[str, ...]
    """Test metrics that may lead a comparison's table (higher is better): the first every row has."""
    columns: list[tuple[str, str, str]]
    """(metric key, column title, format) of the test metrics a comparison shows."""
    label_names: list[str]
    """Names of the outputs: classes, regression targets, labels of a multi-label task."""
    joins_pairs: bool = False
    """True where the task writes both texts of a pair into one input itself (a causal LM's question
    and context, in its prompt); otherwise a pair goes to the model as (text, text_pair)."""

    def read(self, data, seed: int):
        """The Splits (train / validation / test) of the data that `data` (a DataConfig) names; sets label_names."""

    def head_config(self) -> dict:
        """What the model needs to build its head for this task (e.g. num_labels, problem_type)."""

    def encode(self, model, examples, train: bool, note) -> Sequence[dict]:
        """Loader items: the model's inputs and this task's targets under "labels"."""

    def loss_sum(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """The loss summed over the batch (the loop divides by `count` over an accumulated step)."""

    def count(self, batch: dict) -> int: ...

    def metric_state(self): ...

    def update(self, state, logits: torch.Tensor, batch: dict) -> None: ...

    def metrics(self, state) -> dict: ...

    def after_training(self, model, validation_items, ctx: Context) -> dict:
        """Choices made on the validation split once training is over (multi-label thresholds); returns
        what to record in metrics.json."""

    def read_file(self, path: str, data):
        """The examples of one labelled file (for `evaluate --data`), read as the training data was."""

    def test(self, model, examples, items, ctx: Context) -> tuple[dict, dict]:
        """(test metrics, extra figures for metrics.json)."""

    def predict(self, model, examples, ctx: Context, detail: bool = False) -> dict[str, list]:
        """The columns `transferkit predict` adds, one value per input, in input order; `detail` adds
        "probabilities" (every label's, as a dict per input) where the task has them."""

    def describe(self, metrics: dict) -> tuple[str, str | None]:
        """The test result for the terminal's summary line, and a detail for its parentheses."""

    def before_save(self, model) -> None:
        """Make the model's own folder predict as the task does (regression folds its target scaling into the head)."""

    def state(self) -> dict:
        """What task.json keeps, for `restore`."""

    def restore(self, state: dict) -> None: ...


def write_task_file(task: Task, folder: Path) -> None:
    import json

    (folder / TASK_FILE).write_text(json.dumps({"task": task.name, **task.state()}, indent=2))


def split_being_encoded(train: bool, seen) -> str:
    """Which split an `encode` call is reading, for a task that reports per split: runs encode train,
    then validation, then test; `seen` holds the names already reported."""
    return "train" if train else "validation" if "validation" not in seen else "test"


def merge_states(states: list):
    """One metric state from those several processes accumulated over their shares of a split: counts
    (a tensor: the confusion matrix, token sums) add up; lists of per-batch parts join, component by
    component. A task whose state is neither has its own `merge_states`."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return sum(states[1:], first.clone())
    if isinstance(first, list):
        return [[part for state in states for part in state[i]] for i in range(len(first))]
    raise TypeError(f"no way to merge metric states of type {type(first).__name__}: give the task a merge_states")
