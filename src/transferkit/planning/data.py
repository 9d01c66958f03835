"""What `plan` reads from the user's data, task by task: how many examples (labelled texts, questions,
tagged sentences) and classes, how foreign the text is to the model's tokenizer, and for extractive
QA the windows its questions make at the planned length. No model weights are loaded."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from .. import assets
from ..config import DEFAULT_MAX_LENGTH, DataConfig, QAConfig
from ..errors import UserError
from .advice import DataSummary, Windows, measure_shift

QA_SAMPLE = 2000
"""Questions whose windows are counted; the whole set's windows are estimated from them."""


@dataclass(frozen=True)
class PlanTask:
    """How `plan` sizes one task."""

    head: str
    """The planner's head (memory.TASKS): classify, span, token or lm."""
    trains: str | None
    """A token-level head that a regime must be able to train (methods.Regime.heads); None: every
    regime serves (sequence heads, and a causal LM's own head)."""
    seq: int = DEFAULT_MAX_LENGTH
    """Tokens per example by default: transferkit's model.max_length, or qa.max_length for windows."""
    read: Callable | None = None
    """(data name, tokenizer or None, seq, stride, columns) -> DataSummary; None: labelled texts."""
    unit: str | None = None
    """What one example is, where the task has no classes (counted from --examples)."""
    windows: bool = False
    """Inputs are windows of a context, moving by seq - stride tokens."""

    def unserved(self, regimes: dict) -> tuple[str, ...]:
        """The regimes of `regimes` (name -> methods.Regime) that cannot train this task's head."""
        return tuple(name for name, r in regimes.items() if self.trains and self.trains not in r.heads)

    def check(self, seq: int, stride: int) -> None:
        if self.windows and stride >= seq // 2:
            raise UserError(f"--stride ({stride}) must be under half of --seq ({seq}), as qa.stride is of qa.max_length; lower --stride")


def _questions(name: str, tokenizer, seq: int, stride: int, columns: dict) -> DataSummary:
    """A QA set's questions, with the windows a seeded sample of them makes at `seq` tokens."""
    from ..data.qa import read_qa
    from ..tasks.qa import window_stats, windows

    columns = {"text_column": columns.get("text") or "question", "pair_column": "context", "label_column": columns.get("label") or "answer"}
    examples = read_qa(name, DataConfig(name=name, **columns))
    if tokenizer is None:
        return DataSummary(len(examples), {}, unit="questions")
    shift = measure_shift(tokenizer, list(dict.fromkeys(examples.pairs)))
    sample = sorted(random.Random(0).sample(range(len(examples)), min(QA_SAMPLE, len(examples))))
    answers = [examples.labels[i].answers[:1] for i in sample]
    rows = list(windows(tokenizer, [examples.inputs[i] for i in sample], [examples.pairs[i] for i in sample], answers, seq, stride))
    stats = window_stats({"example": [r["example"] for r in rows], "start": [r["start"] for r in rows]}, answers)
    counted = Windows(len(rows) / len(sample), stats["outside_share"], len(sample), seq, stride)
    return DataSummary(len(examples), {}, shift, unit="questions", windows=counted)


def _tagged(name: str, tokenizer, seq: int, stride: int, columns: dict) -> DataSummary:
    """Tagged sentences, with the tags the token head will have (O and every tag seen, as the task counts them)."""
    from ..data.tagged import read_tagged

    examples, _ = read_tagged(name)
    tags = {"O"} | {tag for sentence in examples.labels for tag in sentence}
    shift = measure_shift(tokenizer, [" ".join(words) for words in examples.inputs]) if tokenizer else None
    return DataSummary(len(examples), {}, shift, unit="tagged sentences", tags=len(tags))


def _labelled(name: str, tokenizer, seq: int, stride: int, columns: dict) -> DataSummary:
    from ..data.builtin import read_builtin
    from ..data.tables import labelled_examples

    if name in assets.DATASETS:
        examples = read_builtin(name)
    else:
        examples = labelled_examples(name, columns.get("text") or "text", columns.get("label") or "label")
    return DataSummary.from_labels(examples.labels, measure_shift(tokenizer, examples.inputs) if tokenizer else None)


# Every sequence-level task has a linear head of --labels outputs; extractive QA has start and end
# logits per token, tagging a tag per token.
SEQUENCE = PlanTask("classify", None, read=_labelled)
LANGUAGE = PlanTask("lm", None, read=_labelled)
TASKS = {
    "classify": SEQUENCE,
    "regress": SEQUENCE,
    "multilabel": SEQUENCE,
    "qa": PlanTask("span", "span", QAConfig.max_length, _questions, "questions", windows=True),
    "tokens": PlanTask("token", "token", read=_tagged, unit="tagged sentences"),
    "lm": LANGUAGE,
    "generate": LANGUAGE,
}


def plan_task(task: str | None, data: str | None) -> PlanTask:
    """The task --task names, or a built-in dataset's own, else classification."""
    name = task or (assets.DATASETS[data].task if data in assets.DATASETS else "classify")
    if name not in TASKS:
        raise UserError(f"--task must be one of {', '.join(TASKS)} (got '{name}')")
    return TASKS[name]


def summarise(args, task: PlanTask, seq: int) -> DataSummary | None:
    """The data's summary: from --data (counted, and its text measured against the model's tokenizer)
    or from --examples/--classes; None without either."""
    if args.data is not None and args.examples is not None:
        raise UserError("give either --data FILE or --examples N (the data's size), not both")
    if args.examples is not None:
        if args.examples < 1 or (args.classes or 2) < 1:
            raise UserError("--examples and --classes must be at least 1")
        if task.unit is not None:  # no classes to balance
            return DataSummary(args.examples, {}, unit=task.unit)
        return DataSummary.balanced(args.examples, args.classes or 2)
    if args.classes is not None:
        raise UserError("--classes goes with --examples; with --data the classes are counted from the labels")
    if args.data is None:
        return None
    columns = {"text": args.text_column, "label": args.label_column}
    return task.read(args.data, fast_tokenizer(args.model), seq, args.stride, columns)


def fast_tokenizer(model: str):
    """The model's fast tokenizer, to measure the data with; None where the folder has no usable one."""
    from transformers import AutoTokenizer

    from ..models.text import quiet_transformers
    from .architecture import locate

    quiet_transformers()
    folder, gguf = locate(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tokenizer if tokenizer.is_fast else None
