"""Which regimes suit the data and the memory budget, from explicit rules a user can read.

Each rule in RULES looks at the facts (how many labelled examples, classes and their balance,
how foreign the text is to the model's tokenizer, the memory plan, an earlier learning curve)
and, when it applies, says which regimes it favours or advises against, and why. A regime's
verdict is the sum of what the rules say about it; one that does not fit the memory budget
is out whatever else holds.

Learning-curve results are the `compare.json` a `compare` run writes, or anything a user measured, as JSON:

    {"results": [{"regime": "full", "train_size": 100, "accuracy": 0.81}, ...]}

or that list alone. Several rows for the same regime and size (seeds) are averaged.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .memory import Plan

REGIMES = ("full", "staged", "lora", "freeze", "prompt", "icl")
# Cheaper first: breaks ties between regimes the rules rate the same.
COST_ORDER = ("freeze", "icl", "prompt", "lora", "staged", "full")

FEW_EXAMPLES = 100
"""Below this many labelled examples (or FEW_PER_CLASS in a class), fine-tuning is unreliable."""
FEW_PER_CLASS = 10
MANY_EXAMPLES = 10_000
"""From here on there is enough data to move every weight, and a frozen model leaves accuracy unused."""
IMBALANCE = 10
"""Largest class over smallest class from which accuracy alone misleads."""
LARGE_MODEL = 1_000_000_000
"""Prompt tuning closes the gap to fine-tuning only around 10B parameters (Lester et al. 2021)."""
SPLIT_WORDS = 0.15
"""Share of words the tokenizer cuts into 3+ pieces that marks a strong domain shift. Measured with
MiniLM's tokenizer: BBC news 1.4%, tweets 7%, biomedical abstracts 33%, German 57%."""
UNKNOWN_TOKENS = 0.01
"""Share of unknown tokens that marks text the model cannot even spell (Chinese under MiniLM: 62%)."""


@dataclass
class DomainShift:
    """How foreign the user's text is to the model's tokenizer (no model weights needed)."""

    words: int
    pieces_per_word: float
    split_words: float
    """Share of words cut into three or more pieces."""
    unknown_tokens: float
    """Share of tokens that are the tokenizer's unknown token."""

    @property
    def strong(self) -> bool:
        return self.split_words >= SPLIT_WORDS or self.unknown_tokens >= UNKNOWN_TOKENS


@dataclass
class Windows:
    """How extractive QA's questions become windows of the model's input (measured on a sample)."""

    per_question: float
    outside_share: float
    """Share of answerable questions whose first answer lies whole in none of their windows."""
    measured: int
    """Questions the two figures were measured on."""
    max_length: int
    stride: int


@dataclass
class DataSummary:
    examples: int
    class_counts: dict[str, int]
    """Examples per class; empty where the task has no classes (question answering, tagging)."""
    shift: DomainShift | None = None
    unit: str = "labelled examples"
    """What one example is, in words: labelled examples, questions, tagged sentences."""
    windows: Windows | None = None
    """Question answering: the windows the questions make at qa.max_length."""
    tags: int | None = None
    """Tagging: the distinct tags (the token head's outputs)."""

    @property
    def labels(self) -> int:
        """Outputs of the task head: tags, classes, or 2 where the task has neither."""
        return self.tags or len(self.class_counts) or 2

    @property
    def smallest(self) -> int:
        return min(self.class_counts.values(), default=self.examples)

    @property
    def largest(self) -> int:
        return max(self.class_counts.values(), default=self.examples)

    @property
    def inputs(self) -> int:
        """Inputs the model sees per pass over the data: windows for QA, else the examples."""
        return self.examples if self.windows is None else round(self.examples * self.windows.per_question)

    @classmethod
    def from_labels(cls, labels: list[str], shift: DomainShift | None = None) -> DataSummary:
        return cls(len(labels), dict(Counter(labels).most_common()), shift)

    @classmethod
    def balanced(cls, examples: int, classes: int) -> DataSummary:
        """From a size and a number of classes alone, assuming balanced classes."""
        return cls(examples, {f"class {i}": examples // classes + (i < examples % classes) for i in range(classes)})


@dataclass
class CurvePoint:
    regime: str
    train_size: int
    accuracy: float


@dataclass
class Facts:
    """Everything the rules look at."""

    data: DataSummary
    parameters: int
    decoder: bool
    plans: dict[str, Plan] = field(default_factory=dict)
    """Memory plans of full, freeze, lora and prompt (staged and icl borrow full's and freeze's)."""
    budget: int | None = None
    curve: list[CurvePoint] = field(default_factory=list)
    available: tuple[str, ...] = REGIMES
    """Regimes transferkit can run today."""
    fewest_processes: dict[str, int | None] = field(default_factory=dict)
    """regime -> the fewest FSDP processes on which it fits the budget (None: no count does)."""
    not_for_task: tuple[str, ...] = ()
    """Regimes transferkit has that cannot train this task's head (prompt tuning on a span head)."""


@dataclass
class Finding:
    rule: str
    reason: str
    votes: dict[str, int] = field(default_factory=dict)
    """regime -> +1 (favoured) or -1 (advised against)."""


@dataclass(frozen=True)
class Rule:
    name: str
    check: Callable[[Facts], Finding | None]


@dataclass
class Advice:
    findings: list[Finding]
    verdicts: dict[str, str]
    """regime -> recommended, possible, not advised, does not fit, or not applicable."""
    ranking: list[str]
    notes: list[str]


def _few_examples(f: Facts) -> Finding | None:
    d = f.data
    if d.examples >= FEW_EXAMPLES and d.smallest >= FEW_PER_CLASS:
        return None
    return Finding(
        "few labelled examples",
        f"only {d.examples:,} {d.unit}{f' ({d.smallest:,} in the smallest class)' if d.class_counts else ''}: too few to move millions of "
        "weights reliably (fine-tuning on small data swings from seed to seed: Dodge et al. 2020, Mosbach et al. 2021). "
        "Use them as in-context examples, for a soft prompt, or to fit a head on frozen features.",
        {"icl": +1, "prompt": +1, "freeze": +1, "full": -1},
    )


def _enough_examples(f: Facts) -> Finding | None:
    d = f.data
    if not (FEW_EXAMPLES <= d.examples < MANY_EXAMPLES and d.smallest >= FEW_PER_CLASS):
        return None
    return Finding(
        "enough to fine-tune",
        f"{d.examples:,} {d.unit}: enough to fine-tune. At this size, LoRA or staged training (head first, "
        "then everything at a lower rate: LP-FT, Kumar et al. 2022) adapt the model while keeping its pre-trained "
        "features, and full fine-tuning starts to pay off.",
        {"lora": +1, "staged": +1, "full": +1},
    )


def _many_examples(f: Facts) -> Finding | None:
    d = f.data
    if d.examples < MANY_EXAMPLES:
        return None
    return Finding(
        "many labelled examples",
        f"{d.examples:,} {d.unit}: enough to train every weight; a frozen backbone or a soft prompt leaves "
        "accuracy unused, and a prompt holds a few dozen examples at most, so in-context learning would waste the rest.",
        {"full": +1, "staged": +1, "freeze": -1, "prompt": -1, "icl": -1},
    )


def _imbalance(f: Facts) -> Finding | None:
    d = f.data
    if len(d.class_counts) < 2 or d.largest < IMBALANCE * d.smallest:
        return None
    return Finding(
        "imbalanced classes",
        f"classes are imbalanced (largest {d.largest:,}, smallest {d.smallest:,}): judge runs by macro-F1 rather "
        "than accuracy, and consider class weights or oversampling the small classes.",
    )


def _small_model_prompt(f: Facts) -> Finding | None:
    if f.parameters >= LARGE_MODEL:
        return None
    return Finding(
        "prompt tuning needs a large model",
        f"prompt tuning matches fine-tuning only around 10B parameters (Lester et al. 2021); with "
        f"{f.parameters / 1e6:,.0f}M parameters it trails the other regimes.",
        {"prompt": -1},
    )


def _domain_shift(f: Facts) -> Finding | None:
    s = f.data.shift
    if s is None or not s.strong:
        return None
    return Finding(
        "text far from the pre-training domain",
        f"the tokenizer cuts {s.split_words:.0%} of the words into 3+ pieces and {s.unknown_tokens:.1%} of tokens are "
        "unknown: the text is far from what the model was trained on. Train more layers (full or staged, not a "
        "frozen backbone or a soft prompt), or first continue pre-training on the domain's unlabelled text "
        "(Gururangan et al. 2020).",
        {"full": +1, "staged": +1, "freeze": -1, "prompt": -1},
    )


def _memory(f: Facts) -> Finding | None:
    if f.budget is None or not f.plans:
        return None
    full = f.plans.get("full")
    if full is None or full.fits(f.budget):
        return None
    cheap = [r for r in ("lora", "freeze") if r in f.plans and f.plans[r].fits(f.budget)]
    if not cheap:
        return None
    return Finding(
        "limited memory",
        f"full fine-tuning needs {full.peak / 2**30:.1f} GiB, more than the {f.budget / 2**30:.1f} GiB budget; "
        "LoRA trains a few percent of the weights (small gradients and optimizer state), and a frozen backbone "
        "needs only the weights and one forward pass.",
        {r: +1 for r in cheap},
    )


def _several_devices(f: Facts) -> Finding | None:
    full = f.plans.get("full")
    needed = f.fewest_processes.get("full")
    if f.budget is None or full is None or full.fits(f.budget) or needed is None or needed < 2:
        return None
    ddp = " (more processes without sharding do not help: DDP keeps a full replica on every device)" if full.setup.ddp else ""
    return Finding(
        "several devices",
        f"full fine-tuning fits across at least {needed} devices of {f.budget / 2**30:.1f} GiB with --sharding fsdp, "
        f"which splits the weights, gradients and optimizer state between them{ddp}.",
    )


def _learning_curve(f: Facts) -> Finding | None:
    if not f.curve:
        return None
    sizes = sorted({p.train_size for p in f.curve})
    nearest = min(sizes, key=lambda s: abs(math.log(s) - math.log(max(f.data.examples, 1))))
    at = {}
    for p in f.curve:
        if p.train_size == nearest:
            at.setdefault(p.regime, []).append(p.accuracy)
    means = sorted(((sum(v) / len(v), r) for r, v in at.items()), reverse=True)
    best_acc, best = means[0]
    others = ", ".join(f"{r} {a:.3f}" for a, r in means[1:])
    far = f" (the nearest measured size to your {f.data.examples:,})" if nearest != f.data.examples else ""
    votes = {best: +1} | {r: -1 for a, r in means[1:] if a < best_acc - 0.05}
    return Finding(
        "earlier learning curve",
        f"in the earlier comparison, {best} was best at {nearest:,} training examples{far}: "
        f"{best_acc:.3f}" + (f" against {others}" if others else ""),
        votes,
    )


RULES = [
    Rule("few labelled examples", _few_examples),
    Rule("enough to fine-tune", _enough_examples),
    Rule("many labelled examples", _many_examples),
    Rule("imbalanced classes", _imbalance),
    Rule("prompt tuning needs a large model", _small_model_prompt),
    Rule("text far from the pre-training domain", _domain_shift),
    Rule("limited memory", _memory),
    Rule("several devices", _several_devices),
    Rule("earlier learning curve", _learning_curve),
]


def advise(facts: Facts) -> Advice:
    """Run every rule, then rate each regime by the sum of the rules' votes."""
    findings = [found for rule in RULES if (found := rule.check(facts)) is not None]
    notes = []
    verdicts = {}
    score = {r: sum(f.votes.get(r, 0) for f in findings) for r in REGIMES}
    for regime in REGIMES:
        plan = _plan_for(facts, regime)
        if (regime == "icl" and not facts.decoder) or regime in facts.not_for_task:
            verdicts[regime] = "not applicable"
        elif plan is not None and facts.budget is not None and not plan.fits(facts.budget):
            verdicts[regime] = "does not fit"
        elif score[regime] > 0:
            verdicts[regime] = "recommended"
        elif score[regime] == 0:
            verdicts[regime] = "possible"
        else:
            verdicts[regime] = "not advised"
    if not facts.decoder:
        notes.append("in-context learning needs a generative (decoder) model; this one is an encoder")
    unserved = [r for r in facts.not_for_task if facts.decoder or r != "icl"]  # an encoder's icl has its note above
    if unserved:
        notes.append(f"{', '.join(unserved)} cannot train this task's head")
    w = facts.data.windows
    if w is not None:
        notes.append(f"{facts.data.examples:,} questions make about {facts.data.inputs:,} windows of {w.max_length} tokens "
                     f"(stride {w.stride}; {w.per_question:.2f} per question, measured on {w.measured:,}): a pass over the "
                     "data costs per window")  # fmt: skip
        if w.outside_share > 0:
            notes.append(f"{w.outside_share:.1%} of the answers lie whole in no window, so training labels them as no answer; "
                         "raise qa.max_length or qa.stride if that share matters")  # fmt: skip
    missing = [r for r in REGIMES if r not in facts.available and verdicts[r] != "not applicable"]
    if missing:
        notes.append(f"not in transferkit yet: {', '.join(missing)}")
    order = ("recommended", "possible", "not advised", "does not fit", "not applicable")
    ranking = sorted(REGIMES, key=lambda r: (order.index(verdicts[r]), -score[r], COST_ORDER.index(r)))
    return Advice(findings, verdicts, ranking, notes)


def _plan_for(facts: Facts, regime: str) -> Plan | None:
    # Staged training peaks in its full fine-tuning stage; in-context learning only runs the model.
    return facts.plans.get({"staged": "full", "icl": "freeze"}.get(regime, regime))


def measure_shift(tokenizer, texts: list[str], limit: int = 2000) -> DomainShift:
    """Word pieces per word, share of words split into 3+ pieces and of unknown tokens, over `limit` texts."""
    words = split = unknown = tokens = 0
    unk = tokenizer.unk_token_id
    for text in texts[:limit]:
        encoding = tokenizer(text, add_special_tokens=False, truncation=True, max_length=512)
        pieces = Counter(w for w in encoding.word_ids() if w is not None)
        words += len(pieces)
        split += sum(1 for n in pieces.values() if n >= 3)
        tokens += len(encoding["input_ids"])
        unknown += sum(1 for i in encoding["input_ids"] if unk is not None and i == unk)
    words = max(words, 1)
    return DomainShift(words, tokens / words, split / words, unknown / max(tokens, 1))


def read_curve(path: str | Path) -> list[CurvePoint]:
    """Learning-curve results in the format of this module's docstring."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"learning-curve file '{path}' does not exist; check the path") from None
    except json.JSONDecodeError as e:
        raise UserError(f"learning-curve file '{path}' is not valid JSON ({e.msg}); see 'transferkit plan --help'") from None
    if isinstance(data, dict) and "rows" in data:  # a compare.json: its runs, failed ones left out
        rows = [{**row, "train_size": row.get("trained_examples")} for row in data["rows"] if "error" not in row]
    else:
        rows = data.get("results") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise UserError(f"learning-curve file '{path}' holds no results; expected a list of {{regime, train_size, accuracy}}")
    points = []
    for number, row in enumerate(rows, start=1):
        try:
            points.append(CurvePoint(str(row["regime"]), int(row["train_size"]), float(row["accuracy"])))
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"learning-curve file '{path}': result {number} needs regime, train_size and accuracy (got {row!r:.80})"
            ) from None
    return points
