"""Classification with a causal LM: each label is a word the model is asked to say (its verbaliser).

Training teaches the model to answer with the right word (the language-model loss on the answer
tokens, so validation is by loss); testing and predicting score every label's verbaliser after the
prompt (eval/scoring.py), optionally calibrated against a content-free input (Zhao et al. 2021).
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..eval.metrics import classification_metrics
from .classify import check_known
from .generate import LanguageModeling


class VerbaliserClassification(LanguageModeling):
    name = "classify"
    head = "lm"
    metric = "loss"
    stopping_metrics = ("loss", "loss+general")
    headlines = ("accuracy",)
    columns = [("accuracy", "accuracy", "{:.4f}"), ("macro_f1", "macro-F1", "{:.4f}")]

    def __init__(self, cfg=None):
        self.cfg = cfg
        self.label_names: list[str] = []
        self.content_free: str | None = (cfg.icl.content_free if cfg.icl.calibrate else None) if cfg is not None else None

    def read(self, data, seed: int):
        from ..data.splits import load_splits

        splits = load_splits(data, seed)
        self.label_names = splits.label_names
        return splits

    def read_file(self, path: str, data):
        """Labelled examples of one file (for `evaluate --data`), read as the training data was."""
        from ..data.splits import read_labelled

        examples = read_labelled(path, data)
        check_known(examples.labels, self.label_names, path)
        return examples

    def head_config(self) -> dict:
        from ..models.causal import label_prompt

        return {"task": "classify", "prompt": label_prompt(self.label_names, self.cfg.lm.verbalisers, self.cfg.lm.instruction)}

    def encode(self, model, examples, train: bool = False, note=lambda message: None) -> list[dict]:
        """Prompt (instruction, demonstrations, the text) then the label's verbaliser, which is learned."""
        prefix, answers = model.prefix_ids(), model.prompt.answer_ids(model.tokenizer)
        queries = [prefix + model.prompt.query_ids(model.tokenizer, text, model.max_length) for text in examples.inputs]
        if examples.labels is None:
            return [{"input_ids": q} for q in queries]
        index = {name: i for i, name in enumerate(self.label_names)}
        answer = [answers[index[y]] for y in examples.labels]
        return [{"input_ids": q + a, "labels": [-100] * len(q) + a} for q, a in zip(queries, answer)]

    def choose_demonstrations(self, model, splits, cfg) -> None:
        """In-context learning: k training examples, balanced across labels, that fit in the context."""
        from ..methods.icl import choose_demonstrations

        index = {name: i for i, name in enumerate(self.label_names)}
        texts, labels = splits.train.inputs, splits.train.labels
        room = model.context_length - max(len(model.prompt.query_ids(model.tokenizer, t, model.max_length)) for t in splits.test.inputs)
        room -= max(len(a) for a in model.prompt.answer_ids(model.tokenizer))

        def fits(chosen: list[int]) -> bool:
            model.demos = [(texts[i], index[labels[i]]) for i in chosen]
            return len(model.prefix_ids()) <= room

        chosen = choose_demonstrations(labels, cfg.icl.k, cfg.train.seed, fits)
        model.demos = [(texts[i], index[labels[i]]) for i in chosen]
        if len(model.prefix_ids()) > room:
            raise UserError(f"{len(chosen)} demonstrations do not fit in the model's context ({model.context_length} tokens); "
                            "lower icl.shots or model.max_length, or use icl.shots=max")  # fmt: skip

    def after_training(self, model, validation_items, ctx) -> dict:
        return {}

    def test(self, model, examples, items, ctx) -> tuple[dict, dict]:
        from ..eval.causal import verbaliser_scores
        from ..eval.scoring import calibrated

        model.eval()
        scores = verbaliser_scores(model, examples.inputs, ctx.progress)
        extra = {"prompt": {"shots": len(model.demos), "prefix_tokens": len(model.prefix_ids()), "calibrated": self.content_free is not None}}
        if self.content_free is not None:  # both results: what calibration changed is worth seeing
            extra["test_uncalibrated"] = self._metrics(scores, examples.labels)
            scores = calibrated(scores, verbaliser_scores(model, [self.content_free]))
        return self._metrics(scores, examples.labels), extra

    def _metrics(self, scores: torch.Tensor, labels: list[str]) -> dict:
        n = len(self.label_names)
        index = {name: i for i, name in enumerate(self.label_names)}
        confusion = torch.zeros(n, n, dtype=torch.long)
        for truth, predicted in zip(labels, scores.argmax(-1).tolist()):
            confusion[index[truth], predicted] += 1
        return classification_metrics(confusion, self.label_names)

    def probabilities(self, model, examples, batch_size: int = 32) -> torch.Tensor:
        from ..eval.causal import label_probabilities

        return label_probabilities(model, list(examples.inputs), self.content_free)

    def scores(self, model, examples, batch_size: int = 32) -> torch.Tensor:
        """What an export is checked against: the class probabilities."""
        return self.probabilities(model, examples, batch_size)

    @staticmethod
    def activation(logits: torch.Tensor) -> torch.Tensor:
        """The head's raw outputs (a plain load's logits) as `scores`."""
        return logits.softmax(-1)

    @staticmethod
    def same_predictions(a: torch.Tensor, b: torch.Tensor) -> int:
        return int((a.argmax(-1) == b.argmax(-1)).sum())

    def predict(self, model, examples, ctx=None, detail: bool = False) -> dict[str, list]:
        probabilities = self.probabilities(model, examples, ctx.batch_size if ctx is not None else 32)
        best, index = probabilities.max(-1)
        columns = {"predicted_label": [self.label_names[i] for i in index.tolist()], "probability": [round(p, 6) for p in best.tolist()]}
        if detail:
            columns["probabilities"] = [{n: round(p, 6) for n, p in zip(self.label_names, row)} for row in probabilities.tolist()]
        return columns

    def describe(self, m: dict) -> tuple[str, str | None]:
        return f"test accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}", f"{m['examples']} test examples"

    def before_save(self, model) -> None:
        pass

    def state(self) -> dict:
        return {"labels": self.label_names, "content_free": self.content_free}

    def restore(self, state: dict) -> None:
        self.label_names, self.content_free = list(state["labels"]), state.get("content_free")
