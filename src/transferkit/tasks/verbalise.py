"""Classification with a causal LM: each label is a word the model is asked to say (its verbaliser).

Training teaches the model to answer with the right word (the language-model loss on the answer
tokens, so validation is by loss); testing and predicting score every label's verbaliser after the
prompt (eval/scoring.py), optionally calibrated (eval/calibration.py: contextual, domain or batch,
or the mode that scores best on the validation split, chosen after training).
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..eval import calibration
from ..eval.metrics import classification_metrics
from .classify import LabelPredictions, check_known
from .generate import LanguageModeling


class VerbaliserClassification(LabelPredictions, LanguageModeling):
    name = "classify"
    head = "lm"
    metric = "loss"
    stopping_metrics = ("loss", "loss+general")
    headlines = ("accuracy",)
    columns = [("accuracy", "accuracy", "{:.4f}"), ("macro_f1", "macro-F1", "{:.4f}")]

    def __init__(self, cfg=None):
        self.cfg = cfg
        self.label_names: list[str] = []
        asked = cfg.icl.calibrate if cfg is not None else "none"
        # The mode in use ("auto" until after_training chooses) and what it needs at predict time:
        # the content-free inputs it scores, and for batch the mean over the test inputs.
        self.calibration: dict = {"asked": asked, "mode": asked, "content_free": cfg.icl.content_free if cfg is not None else "N/A"}
        self._validation = None  # the validation examples: choices after training are made on them
        self._similar = None  # icl.select=auto: the similar-selection pool, until validation decides

    def read(self, data, seed: int):
        from ..data.splits import load_splits

        splits = load_splits(data, seed)
        self.label_names = splits.label_names
        self._validation = splits.validation
        if self.calibration["asked"] in ("domain", "auto"):
            self.calibration["domain_texts"] = calibration.domain_texts(list(splits.train.inputs), seed)
        return splits

    def read_file(self, path: str, data):
        """Labelled examples of one file (for `evaluate --data`), read as the training data was."""
        from ..data.splits import read_labelled

        examples = read_labelled(path, data)
        check_known(examples.labels, self.label_names, path)
        return examples

    def head_config(self) -> dict:
        from ..models.causal import label_prompt

        lm = self.cfg.lm
        chat = None if lm.chat == "off" else lm.chat
        return {"task": "classify", "prompt": label_prompt(self.label_names, lm.verbalisers, lm.instruction, chat)}

    def encode(self, model, examples, train: bool = False, note=lambda message: None) -> list[dict]:
        """Prompt (instruction, demonstrations, the text) then the label's verbaliser, which is learned."""
        answers = model.prompt.answer_ids(model.tokenizer)
        prefixes = self.prefixes(model, examples.inputs) or [model.prefix_ids()] * len(examples.inputs)
        queries = [p + model.prompt.query_ids(model.tokenizer, text, model.max_length) for p, text in zip(prefixes, examples.inputs)]
        if examples.labels is None:
            return [{"input_ids": q} for q in queries]
        index = {name: i for i, name in enumerate(self.label_names)}
        answer = [answers[index[y]] for y in examples.labels]
        return [{"input_ids": q + a, "labels": [-100] * len(q) + a} for q, a in zip(queries, answer)]

    @staticmethod
    def prefixes(model, texts: list[str]) -> list[list[int]] | None:
        """Each text's own prefix where demonstrations are chosen per query (icl.select=similar: the
        nearest of the model's pool); None where every text shares model.prefix_ids()."""
        if not model.pool:
            return None
        from ..methods.icl import nearest

        chosen = nearest(model.pool_embeddings, model.embed(list(texts)), model.pool_shots)
        return [model.prompt.prefix_ids(model.tokenizer, [model.pool[i] for i in row], model.max_length) for row in chosen]

    def choose_demonstrations(self, model, splits, cfg) -> None:
        """In-context learning: k training examples, balanced across labels, that fit in the context;
        or (icl.select similar) the pool each query's k nearest are drawn from; or (auto) both, for
        validation to decide."""
        from ..methods.icl import choose_demonstrations

        index = {name: i for i, name in enumerate(self.label_names)}
        texts, labels = splits.train.inputs, splits.train.labels
        longest = max(len(model.prompt.query_ids(model.tokenizer, t, model.max_length)) for t in splits.test.inputs)
        room = model.context_length - longest - max(len(a) for a in model.prompt.answer_ids(model.tokenizer))

        def fits(chosen: list[int]) -> bool:
            model.demos = [(texts[i], index[labels[i]]) for i in chosen]
            return len(model.prefix_ids()) <= room

        model.demos = []
        if cfg.icl.select != "similar":
            chosen = choose_demonstrations(labels, cfg.icl.k, cfg.train.seed, fits)
            model.demos = [(texts[i], index[labels[i]]) for i in chosen]
            if len(model.prefix_ids()) > room:
                raise UserError(f"{len(chosen)} demonstrations do not fit in the model's context ({model.context_length} tokens); "
                                "lower icl.shots or model.max_length, or use icl.shots=max")  # fmt: skip
        if cfg.icl.select != "random":
            pool = self._pool(model, [(t, index[y]) for t, y in zip(texts, labels)], cfg.icl.k, room)
            if cfg.icl.select == "similar":
                model.pool, model.pool_embeddings, model.pool_shots = pool
            else:
                self._similar = pool

    def _pool(self, model, pool: list[tuple[str, int]], k: int, room: int) -> tuple:
        """The training examples with their embeddings, checked: k of the longest must fit in the context."""
        if k > len(pool):
            raise UserError(f"icl.shots={k} is more than the {len(pool)} training examples; lower it")
        lengths = sorted(len(model.prompt.query_ids(model.tokenizer, t, model.max_length)) for t, _ in pool)
        longest = sorted(pool, key=lambda e: len(model.prompt.query_ids(model.tokenizer, e[0], model.max_length)))[len(pool) - k :]
        if len(model.prompt.prefix_ids(model.tokenizer, longest, model.max_length)) > room:
            raise UserError(f"the {k} longest training examples (up to {lengths[-1]} tokens each) do not fit in the model's context "
                            f"({model.context_length} tokens) as demonstrations; lower icl.shots or model.max_length")  # fmt: skip
        return pool, model.embed([t for t, _ in pool]), k

    def after_training(self, model, validation_items, ctx) -> dict:
        """Choices made on the validation split: the calibration mode (icl.calibrate=auto) and which
        demonstrations (icl.select=auto), each scored by validation accuracy; recorded in metrics.json."""
        asked = self.calibration["asked"]
        selections = ["random", "similar"] if self._similar is not None else []
        if asked != "auto" and not selections:
            return {}
        if self._validation is None or len(self._validation) == 0:
            raise UserError("icl.calibrate=auto and icl.select=auto choose on the validation split, which is empty; "
                            "name a mode (e.g. icl.calibrate=batch) or give the data a validation split")  # fmt: skip
        modes = calibration.MODES if asked == "auto" else (asked,)
        model.eval()
        grid: dict[str, dict[str, float]] = {}
        for select in selections or [None]:
            if select is not None:
                self._use_selection(model, select)
            grid[select] = self._accuracies(model, self._validation, modes, ctx.progress)
        best = max(grid, key=lambda s: max(grid[s].values()) - 1e-9 * list(grid).index(s))  # a tie keeps random
        chosen = {}
        if selections:
            self._use_selection(model, best)
            chosen["select"], chosen["select_validation_accuracy"] = best, grid
        self.calibration["mode"] = calibration.best_mode(grid[best])
        if asked == "auto":
            chosen["calibration"], chosen["calibration_validation_accuracy"] = self.calibration["mode"], grid[best]
        return chosen

    def _use_selection(self, model, select: str) -> None:
        """Ask with the random demonstrations (shared prefix) or with each query's nearest."""
        if select == "similar":
            model.pool, model.pool_embeddings, model.pool_shots = self._similar
        else:
            model.pool, model.pool_embeddings, model.pool_shots = [], None, 0

    def _accuracies(self, model, examples, modes, progress) -> dict[str, float]:
        """Validation accuracy with each calibration mode, from one scoring of the examples."""
        raw, free = self.score_texts(model, list(examples.inputs), modes, progress)
        return {mode: self._metrics(calibration.calibrated(raw, self.prior(mode, raw, free)), examples.labels)["accuracy"] for mode in modes}

    def score_texts(self, model, texts: list[str], modes, progress=None, prefixes=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, L) scores of `texts`, and for each of `modes` that needs content-free inputs ("N/A" for
        contextual, random in-domain words for domain) their scores, (M, L) under the shared prompt or
        (N, M, L) under each text's own."""
        from ..eval.causal import verbaliser_scores

        wanted = {"contextual": [self.calibration["content_free"]], "domain": self.calibration.get("domain_texts") or []}
        wanted = {mode: texts_ for mode, texts_ in wanted.items() if mode in modes}
        prefixes = prefixes if prefixes is not None else self.prefixes(model, texts)
        raw, scores = verbaliser_scores(model, texts, progress, prefixes, [t for group in wanted.values() for t in group])
        free, start = {}, 0
        for mode, group in wanted.items():
            free[mode], start = scores[..., start : start + len(group), :], start + len(group)
        return raw, free

    def prior(self, mode: str, raw: torch.Tensor, free: dict[str, torch.Tensor], batch: bool = True) -> torch.Tensor | None:
        """What `mode` subtracts from the normalised scores `raw` (N, L). With `batch` False, batch
        calibration takes the stored mean over the run's test inputs instead of the mean over `raw`."""
        if mode == "contextual":
            return calibration.contextual_prior(free["contextual"][..., 0, :])
        if mode == "domain":
            return calibration.domain_prior(free["domain"])
        if mode == "batch":
            return calibration.batch_prior(raw) if batch else torch.tensor(self.calibration["batch_prior"])
        return None

    def test(self, model, examples, items, ctx) -> tuple[dict, dict]:
        mode = self.calibration["mode"]
        model.eval()
        texts = list(examples.inputs)
        prefixes = self.prefixes(model, texts)
        raw, free = self.score_texts(model, texts, (mode,), ctx.progress, prefixes)
        prefix_tokens = round(sum(map(len, prefixes)) / len(prefixes)) if prefixes else len(model.prefix_ids())  # a mean, per query
        extra = {"prompt": {"shots": model.pool_shots if model.pool else len(model.demos), "prefix_tokens": prefix_tokens,
                            "select": "similar" if model.pool else "random", "chat": model.prompt.chat, "calibrated": mode}}  # fmt: skip
        if mode == "batch":  # what predict uses for fewer inputs than calibration.MIN_BATCH
            self.calibration["batch_prior"] = calibration.batch_prior(raw).tolist()
        if self.calibration["asked"] != "none":  # both results: what calibration changed is worth seeing
            extra["test_uncalibrated"] = self._metrics(raw, examples.labels)
        return self._metrics(calibration.calibrated(raw, self.prior(mode, raw, free)), examples.labels), extra

    def _metrics(self, scores: torch.Tensor, labels: list[str]) -> dict:
        n = len(self.label_names)
        index = {name: i for i, name in enumerate(self.label_names)}
        confusion = torch.zeros(n, n, dtype=torch.long)
        for truth, predicted in zip(labels, scores.argmax(-1).tolist()):
            confusion[index[truth], predicted] += 1
        return classification_metrics(confusion, self.label_names)

    def probabilities(self, model, examples, batch_size: int = 32) -> torch.Tensor:
        """(N, L) probability of each label, calibrated as the run chose; batch calibration over the
        inputs given, or, for fewer than calibration.MIN_BATCH, over the run's test inputs."""
        mode = self.calibration["mode"]
        texts = list(examples.inputs)
        raw, free = self.score_texts(model, texts, (mode,))
        batch = len(texts) >= calibration.MIN_BATCH or not self.calibration.get("batch_prior")
        return calibration.calibrated(raw, self.prior(mode, raw, free, batch)).softmax(-1)


    def before_save(self, model) -> None:
        pass

    def state(self) -> dict:
        return {"labels": self.label_names, "calibration": self.calibration}

    def restore(self, state: dict) -> None:
        self.label_names = list(state["labels"])
        if "calibration" in state:
            self.calibration = dict(state["calibration"])
        else:  # a run saved before the calibration modes: content_free set means contextual
            cf = state.get("content_free")
            self.calibration = {"asked": "none" if cf is None else "contextual", "mode": "none" if cf is None else "contextual",
                                "content_free": cf or "N/A"}  # fmt: skip
