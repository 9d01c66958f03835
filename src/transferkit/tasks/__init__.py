"""Tasks, registered per (model kind, task name): a plain dict that grep finds.

`make(kind, cfg)` builds the task a run asks for, or says in one line which tasks the model kind
has; `saved(folder, model)` rebuilds the task of a saved model folder from its task.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .answer import GenerativeQA
from .base import TASK_FILE, Context, Task, write_task_file
from .classify import Classification
from .generate import Generation, LanguageModeling
from .multilabel import MultiLabel
from .qa import QuestionAnswering
from .regress import Regression
from .tokens import TokenClassification
from .verbalise import VerbaliserClassification

# (model kind, task name) -> factory(cfg) -> Task
TASKS = {
    ("encoder", "classify"): lambda cfg: Classification(),
    ("encoder", "regress"): Regression,
    ("encoder", "multilabel"): MultiLabel,
    ("encoder", "qa"): QuestionAnswering,
    ("encoder", "tokens"): TokenClassification,
    ("image", "classify"): lambda cfg: Classification(),
    ("causal", "classify"): VerbaliserClassification,
    ("causal", "generate"): Generation,
    ("causal", "qa"): GenerativeQA,
}

KIND_WORDS = {"encoder": "a text encoder", "causal": "a causal language model", "image": "an image network"}

__all__ = ["Classification", "Context", "GenerativeQA", "Generation", "LanguageModeling", "MultiLabel", "QuestionAnswering", "Regression", "TASKS",
           "Task", "TokenClassification", "VerbaliserClassification", "make", "saved", "write_task_file"]  # fmt: skip


def make(kind: str, cfg) -> Task:
    """The task `cfg.task` names (a built-in dataset's own when it names none), for a model of `kind`."""
    cfg = cfg.with_dataset_defaults()
    name = cfg.task.name
    if name not in {n for _, n in TASKS}:
        raise UserError(f"unknown task '{name}'; choose one of: {', '.join(dict.fromkeys(n for _, n in TASKS))}")
    if (kind, name) not in TASKS:
        fits = [k for k, n in TASKS if n == name]
        has = sorted({n for k, n in TASKS if k == kind})
        other = f"; task {name} needs {' or '.join(KIND_WORDS[k] for k in fits)}" if fits else ""
        raise UserError(f"'{cfg.model.name}' is {KIND_WORDS[kind]}, which does {', '.join(has)}{other} "
                        f"(e.g. --model {EXAMPLE_MODEL.get(fits[0] if fits else kind, 'minilm-l6')})")  # fmt: skip
    return TASKS[kind, name](cfg)


EXAMPLE_MODEL = {"encoder": "minilm-l6", "causal": "smollm2-135m", "image": "efficientnet-lite0"}


DEFAULT_TASK = {"encoder": "classify", "image": "classify"}  # folders saved before task.json existed


def saved(folder: Path, model) -> Task:
    """The task of a model `transferkit train` saved in `folder`, from its task.json."""
    path = folder / TASK_FILE
    if path.is_file():
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"'{path}' is damaged (not JSON); train the run again") from None
    else:
        state = {"task": DEFAULT_TASK.get(model.kind) or model.mode, "labels": model.label_names}
    if (model.kind, state.get("task")) not in TASKS:
        raise UserError(f"'{path}' names a task ({state.get('task')}) this version of transferkit does not know; update transferkit")
    task = TASKS[model.kind, state["task"]](None)
    task.restore(state)
    return task
