"""Extractive question answering (SQuAD): a span head gives every token a start and an end logit, and
the answer is the best-scoring span of the context over all windows of it.

- Windows: the question and as much of the context as `qa.max_length` holds; a longer context is cut
  into windows that overlap by `qa.stride` tokens (the fast tokenizer's overflowing tokens), and the
  offsets map each token back to its characters. A window trains on the gold span where the whole
  answer lies in it, else on the first token ([CLS]: "not here"), as Devlin et al. 2018 and
  transformers' run_qa.py do.
- Answers: in each window the `qa.n_best` highest start and end logits are paired (forward, at most
  `qa.max_answer_length` tokens, inside the context); a span scores start + end logit, and the best
  over every window of the question is the answer.
- Unanswerable questions (SQuAD 2.0): where the training data has some, a question gets no answer when
  its [CLS] score (the lowest over its windows) beats its best span by more than a threshold chosen on
  the validation split once training is over (task.json `null_threshold`).
- Splits are made by context, so no passage is in two of train / validation / test.
- Metrics: exact match and token F1 after the SQuAD normalisation, each the best over the gold
  answers, as percentages (eval/spans.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.tokens import RowItems
from ..errors import UserError
from ..eval.spans import best_over_golds, window_candidates
from .base import split_being_encoded
from .sequence import eval_loader

LABELS = ["start", "end"]  # the span head's two outputs per token


class QuestionAnswering:
    name = "qa"
    head = "span"
    metric = "f1"
    stopping_metrics = ("f1", "exact_match", "loss")
    headlines = ("f1",)
    columns = [("f1", "F1", "{:.2f}"), ("exact_match", "exact match", "{:.2f}")]

    def __init__(self, cfg=None):
        from ..config import QAConfig

        qa = cfg.qa if cfg is not None else QAConfig()
        self.max_length, self.stride = qa.max_length, qa.stride
        self.max_answer_length, self.n_best = qa.max_answer_length, qa.n_best
        self.label_names = list(LABELS)
        self.unanswerable = False  # the training data holds unanswerable questions (SQuAD 2.0)
        self.null_threshold: float | None = None
        self.windows: dict[str, dict] = {}  # per split encoded for the run: questions, windows, answers outside
        self._parts: list[_Part] = []  # every split encoded for evaluation, so that a window's number finds its question

    # --- data ---------------------------------------------------------------------------------

    def read(self, data, seed: int):
        from ..data.qa import contexts_of
        from ..data.splits import load_splits

        splits = load_splits(data, seed, read=lambda name: self.read_file(name, data), stratify=False, groups=contexts_of)
        self.unanswerable = any(not gold.answers for gold in splits.train.labels)
        splits.label_names = self.label_names
        return splits

    def read_file(self, path: str, data):
        from ..data.qa import read_qa

        return read_qa(path, data)

    def head_config(self) -> dict:
        return {"head": "span", "labels": self.label_names, "problem_type": None}

    def encode(self, model, examples, train: bool = False, note=lambda message: None):
        """Windows of every question: token ids, segment ids, and labels (start token, end token, window).

        The window's number (-1 in training, where nothing is scored) lets the metrics gather every
        window of a question, batch by batch, whatever order the loader takes them in.
        """
        from ..data.tokens import cached_rows, content_hash, tokenizer_fingerprint

        tokenizer = model.tokenizer
        self._check_model(model)
        golds = list(examples.labels) if examples.labels is not None else None
        questions, contexts = list(examples.inputs), list(examples.pairs)
        self._check_questions(tokenizer, questions, golds)
        answers = [g.answers[:1] for g in golds] if golds is not None else [()] * len(questions)
        parts = ["qa-windows", content_hash(questions, contexts, answers), tokenizer_fingerprint(tokenizer), self.max_length, self.stride]
        rows = cached_rows(parts, lambda: windows(tokenizer, questions, contexts, answers, self.max_length, self.stride),
                           WINDOW_SCHEMA(), note, f"windows of {len(questions):,} questions")  # fmt: skip
        stats = window_stats(rows, answers)
        if golds is not None:
            split = split_being_encoded(train, self.windows)
            self.windows[split] = stats
            outside = f"; {stats['answers_outside']:,} answers ({stats['outside_share']:.1%}) lie outside every window" if stats["answers_outside"] else ""
            note(f"{split}: {stats['questions']:,} questions made {stats['windows']:,} windows (qa.max_length {self.max_length}, "
                 f"qa.stride {self.stride}){outside}")  # fmt: skip
        first = -1
        if not train:
            first = sum(len(p.rows) for p in self._parts)
            self._parts.append(_Part(rows, contexts, golds, first))
        return WindowItems(rows, first)

    def _check_model(self, model) -> None:
        if not model.tokenizer.is_fast:
            raise UserError("question answering maps tokens back to characters with a fast tokenizer's offsets; this model's "
                            "tokenizer is a slow one: save the model with its tokenizer.json (a fast tokenizer)")  # fmt: skip
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions and self.max_length > positions:
            raise UserError(f"qa.max_length={self.max_length} is more than the model holds ({positions} positions); "
                            f"set qa.max_length={positions} or less")  # fmt: skip

    def _check_questions(self, tokenizer, questions: list[str], golds) -> None:
        """Every question leaves room for more context than the windows share (else the tokenizer cannot cut them)."""
        special = tokenizer.num_special_tokens_to_add(pair=True)
        lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
        for i, n in enumerate(lengths):
            room = self.max_length - special - n
            if room <= self.stride:
                name = f"question '{golds[i].id}'" if golds is not None else f"question {i + 1}"
                raise UserError(f"{name} takes {n} tokens, which leaves {room} of qa.max_length={self.max_length} for its context, "
                                f"no more than qa.stride={self.stride}; raise qa.max_length, lower qa.stride or shorten the question")  # fmt: skip

    # --- loss and metrics ---------------------------------------------------------------------

    def loss_sum(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        # Cross-entropy of the start and of the end position, averaged (as BertForQuestionAnswering's
        # loss), summed over the windows of the batch.
        labels = batch["labels"]
        start = F.cross_entropy(logits[..., 0].float(), labels[:, 0], reduction="sum")
        end = F.cross_entropy(logits[..., 1].float(), labels[:, 1], reduction="sum")
        return (start + end) / 2

    def count(self, batch: dict) -> int:
        return len(batch["labels"])

    def metric_state(self) -> dict:
        return {}  # question (part, number) -> [candidates (score, start char, end char), lowest [CLS] score]

    def update(self, state: dict, logits: torch.Tensor, batch: dict) -> None:
        logits = logits.float().cpu()
        for row, window in zip(logits, batch["labels"][:, 2].tolist()):
            part, i = self._window(window)
            record = part.rows[i]
            offsets = torch.tensor(record["offsets"]).view(-1, 2)  # (T, 2) characters of each token; -1: not context
            n = len(offsets)
            found = window_candidates(row[:n], offsets[:, 0] >= 0, self.n_best, self.max_answer_length)
            entry = state.setdefault((part.first, record["example"]), [[], math.inf])
            entry[0] += [(score, int(offsets[s, 0]), int(offsets[e, 1])) for score, s, e in found]
            entry[1] = min(entry[1], float(row[0, 0] + row[0, 1]))

    def merge_states(self, states: list[dict]) -> dict:
        """The windows of one question may have been scored by different processes: their candidates join,
        and the lowest [CLS] score is kept."""
        merged: dict = {}
        for state in states:
            for key, (candidates, null) in state.items():
                entry = merged.setdefault(key, [[], math.inf])
                entry[0] += candidates
                entry[1] = min(entry[1], null)
        return merged

    def _window(self, window: int):
        if window < 0:
            raise AssertionError("training windows are never scored")
        part = next(p for p in self._parts if p.first <= window < p.first + len(p.rows))
        return part, window - part.first

    def answers(self, state: dict) -> dict:
        """(part, question) -> (answer text, start char or -1, probability, best span score - [CLS] score)."""
        parts = {p.first: p for p in self._parts}
        out = {}
        for (first, example), (candidates, null) in state.items():
            context = parts[first].contexts[example]
            best = sorted(candidates, reverse=True)[: self.n_best]
            scores = torch.tensor([s for s, _, _ in best] + [null])
            probabilities = scores.softmax(0).tolist()  # over the n best spans and "no answer"
            if not best:  # no span fits in the context (a window of question alone): no answer
                out[first, example] = ("", -1, probabilities[-1], -1e9)
                continue
            score, start, end = best[0]
            out[first, example] = (context[start:end], start, probabilities[0], score - null)
        return out

    def _scored(self, state: dict) -> list[tuple]:
        """Per question: (best span - [CLS] score, (EM, F1) answered, (EM, F1) left unanswered, answerable)."""
        parts = {p.first: p for p in self._parts}
        rows = []
        for (first, example), (text, _, _, margin) in self.answers(state).items():
            golds = [t for t, _ in parts[first].golds[example].answers]
            rows.append((margin, best_over_golds(text, golds), best_over_golds("", golds), bool(golds)))
        return rows

    def metrics(self, state: dict) -> dict:
        rows = self._scored(state)
        threshold = self.null_threshold
        if threshold is None and self.unanswerable:  # during training: the best on the split itself, as after_training chooses
            threshold = best_null_threshold(rows)
        return score_rows(rows, threshold)

    # --- after training, testing, predicting ----------------------------------------------------

    def after_training(self, model, validation_items, ctx) -> dict:
        """With unanswerable questions in training: the no-answer threshold that maximises validation F1."""
        if not self.unanswerable:
            return {}
        rows = self._scored(self._run(model, validation_items))
        self.null_threshold = best_null_threshold(rows)
        return {"null_threshold": self.null_threshold, "validation_f1": score_rows(rows, self.null_threshold)["f1"]}

    @torch.no_grad()
    def _run(self, model, items, batch_size: int = 64) -> dict:
        """The metric state (each question's candidate spans) of the model over `items`, in fp32."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        state = self.metric_state()
        for batch in eval_loader(items, model, batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            self.update(state, model(**{k: v for k, v in batch.items() if k != "labels"}), batch)
        model.train(was_training)
        return state

    def test(self, model, examples, items, ctx) -> tuple[dict, dict]:
        from ..training.loop import evaluate

        metrics = evaluate(model, eval_loader(items, model), self, ctx.accelerator, "fp32")
        return metrics, {"windows": dict(self.windows), "windowing": {"max_length": self.max_length, "stride": self.stride}}

    def predict(self, model, examples, ctx=None, detail: bool = False) -> dict[str, list]:
        """The answer of each question in its context: text, character offset (-1: none), probability."""
        items = self.encode(model, examples)
        state = self._run(model, items, ctx.batch_size if ctx is not None else 32)
        first = items.first
        answers = self.answers(state)
        rows = [answers[first, i] for i in range(len(examples))]
        if self.null_threshold is not None:  # SQuAD 2.0: no answer where the best span barely beats [CLS]
            rows = [("", -1, p, m) if m <= self.null_threshold else (t, s, p, m) for t, s, p, m in rows]
        return {"answer": [t for t, _, _, _ in rows], "answer_start": [s for _, s, _, _ in rows],
                "score": [round(p, 6) for _, _, p, _ in rows]}  # fmt: skip

    def scores(self, model, examples, batch_size: int = 32):
        raise UserError("export checks a run's class probabilities; a question-answering model folder is already a plain "
                        "AutoModelForQuestionAnswering folder (or a PEFT adapter): load it as the README shows")  # fmt: skip

    def describe(self, m: dict) -> tuple[str, str | None]:
        return f"test F1 {m['f1']:.2f}  exact match {m['exact_match']:.2f}", f"{m['examples']} test questions"

    def before_save(self, model) -> None:
        pass

    def state(self) -> dict:
        return {"labels": self.label_names, "max_length": self.max_length, "stride": self.stride,
                "max_answer_length": self.max_answer_length, "n_best": self.n_best, "unanswerable": self.unanswerable,
                "null_threshold": self.null_threshold}  # fmt: skip

    def restore(self, state: dict) -> None:
        self.max_length, self.stride = state["max_length"], state["stride"]
        self.max_answer_length, self.n_best = state["max_answer_length"], state["n_best"]
        self.unanswerable, self.null_threshold = state.get("unanswerable", False), state.get("null_threshold")


@dataclass
class _Part:
    """One encoded split: its windows (a memory-mapped table), its contexts and gold answers, and the
    number of its first window."""

    rows: object
    contexts: list[str]
    golds: list | None
    first: int


class WindowItems(RowItems):
    """Loader items over the windows of a split: input_ids, token_type_ids, labels (start, end, window)."""

    def __init__(self, rows, first: int):
        super().__init__(rows)
        self.first = first

    def __getitems__(self, indices: list[int]) -> list[dict]:
        batch = self.rows[indices]
        window = (lambda i: -1) if self.first < 0 else (lambda i: self.first + i)
        return [{**{c: batch[c][j] for c in self.columns}, "labels": torch.tensor([batch["start"][j], batch["end"][j], window(i)])}
                for j, i in enumerate(indices)]  # fmt: skip


def WINDOW_SCHEMA():
    import pyarrow as pa

    return pa.schema([("input_ids", pa.list_(pa.int32())), ("token_type_ids", pa.list_(pa.int8())), ("offsets", pa.list_(pa.int32())),
                      ("example", pa.int32()), ("start", pa.int32()), ("end", pa.int32()), ("length", pa.int32())])  # fmt: skip


def windows(tokenizer, questions: list[str], contexts: list[str], answers: list, max_length: int, stride: int, chunk: int = 256):
    """Every window of every question (question first, the context cut with overlap), with its label:
    the (start, end) tokens of the first gold answer where the whole answer lies in it, else (0, 0)."""
    for first in range(0, len(questions), chunk):
        enc = tokenizer(questions[first : first + chunk], contexts[first : first + chunk], truncation="only_second",
                        max_length=max_length, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip
        for w, ids in enumerate(enc["input_ids"]):
            example = first + enc["overflow_to_sample_mapping"][w]
            offsets = [o if s == 1 else (-1, -1) for o, s in zip(enc["offset_mapping"][w], enc.sequence_ids(w))]
            start, end = span_tokens(offsets, answers[example][0] if answers[example] else None)
            segments = enc["token_type_ids"][w] if "token_type_ids" in enc else [0] * len(ids)
            yield {"input_ids": ids, "token_type_ids": segments, "offsets": [c for o in offsets for c in o], "example": example,
                   "start": start, "end": end, "length": len(ids)}  # fmt: skip


def span_tokens(offsets: list[tuple[int, int]], answer: tuple[str, int] | None) -> tuple[int, int]:
    """The first and last token of `answer` (text, start char) in a window, or (0, 0) where it is not whole in it."""
    context = [t for t, (a, _) in enumerate(offsets) if a >= 0]
    if answer is None or not context:
        return 0, 0
    start_char, end_char = answer[1], answer[1] + len(answer[0])
    if offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = max(t for t in context if offsets[t][0] <= start_char)
    end = min(t for t in context if offsets[t][1] >= end_char)
    return start, end


def window_stats(rows, answers: list) -> dict:
    """Questions, windows, and answers that lie outside every window of their question (labelled [CLS] everywhere)."""
    found = set()
    for example, start in zip(rows["example"], rows["start"]):
        if start > 0:
            found.add(example)
    answerable = [i for i, a in enumerate(answers) if a]
    outside = sum(i not in found for i in answerable)
    return {"questions": len(answers), "windows": len(rows), "answers_outside": outside,
            "outside_share": outside / len(answerable) if answerable else 0.0}  # fmt: skip


def best_null_threshold(rows: list) -> float:
    """The threshold on (best span score - [CLS] score) at or below which leaving a question unanswered
    gives the highest F1 over `rows` (the SQuAD 2.0 evaluation's best threshold; chosen on validation).
    Below every margin: answer every question."""
    order = sorted(rows, key=lambda r: r[0])
    if not order:
        return 0.0
    total = sum(answered[1] for _, answered, _, _ in order)  # every question answered
    best_total, best = total, order[0][0] - 1.0
    for k, (margin, answered, unanswered, _) in enumerate(order):
        total += unanswered[1] - answered[1]
        tied = k + 1 < len(order) and order[k + 1][0] == margin  # a threshold leaves every tied margin unanswered
        if not tied and total > best_total:
            best_total, best = total, margin
    return best


def score_rows(rows: list, threshold: float | None) -> dict:
    """Exact match and F1 (percentages) of `rows` (margin, (EM, F1) answered, (EM, F1) unanswered,
    answerable), a question left unanswered where its margin is at most `threshold` (None: never);
    with unanswerable gold questions, the scores of each kind apart too."""
    chosen = [(u if threshold is not None and m <= threshold else a, gold) for m, a, u, gold in rows]

    def mean(kept: list, k: int) -> float:
        return 100 * sum(score[k] for score, _ in kept) / max(len(kept), 1)

    out = {"exact_match": mean(chosen, 0), "f1": mean(chosen, 1), "examples": len(rows)}
    if any(not gold for _, gold in chosen):
        has, none = [c for c in chosen if c[1]], [c for c in chosen if not c[1]]
        out |= {"has_answer_f1": mean(has, 1), "no_answer_f1": mean(none, 1), "has_answer_examples": len(has),
                "no_answer_examples": len(none)}  # fmt: skip
    return out
