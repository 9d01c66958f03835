"""Token classification (named entities): a tag per word, from a linear head over every token.

Words come pre-split (CoNLL lines, JSONL `tokens`); the tokenizer cuts each into sub-words and the
word's tag is the label of its first sub-word, the others ignored in the loss (-100), as in BERT's
CoNLL-2003 set-up (Devlin et al. 2018). BIO and BIOES tags; the metrics are entity-level precision,
recall and F1 by seqeval's definition (eval/entities.py) with F1 per entity type, and the tagging
accuracy of words. `predict` splits a text into words (WORD below), tags them and returns each
entity with its character span.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..eval.entities import capitalised_rule, entity_metrics, get_entities, most_frequent_type
from ..data.tokens import RowItems
from .sequence import eval_loader

# How `predict` cuts a text into words: words with inner hyphens, apostrophes or dots ("e-mail",
# "don't", "U.S"), @mentions and #hashtags, and any other character that is not a space on its own.
WORD = re.compile(r"[@#]?\w+(?:[-'’.]\w+)*|\S")


class TokenClassification:
    name = "tokens"
    head = "token"
    metric = "f1"
    stopping_metrics = ("f1", "loss", "token_accuracy")
    headlines = ("f1",)
    columns = [("f1", "entity F1", "{:.4f}"), ("precision", "precision", "{:.4f}"), ("recall", "recall", "{:.4f}")]

    def __init__(self, cfg=None):
        self.scheme_setting = cfg.task.scheme if cfg is not None else "auto"
        self.scheme: str | None = None
        self.label_names: list[str] = []
        self.cut_words: dict[str, int] = {}  # per split: words whose tags are not scored (beyond max_length, or no sub-word)

    # --- data ---------------------------------------------------------------------------------

    def read(self, data, seed: int):
        from ..data.splits import load_splits

        splits = load_splits(data, seed, read=lambda name: self.read_file(name, data), stratify=False)
        tags = {tag for sentence in splits.train.labels for tag in sentence}
        self.label_names = ["O", *sorted(tags - {"O"})]
        for split_name, split in (("validation", splits.validation), ("test", splits.test)):
            unseen = sorted({tag for sentence in split.labels for tag in sentence} - tags)
            if unseen:
                raise UserError(f"tag '{unseen[0]}' is in the {split_name} data but never in training; add training sentences "
                                f"with it or remove it from the {split_name} data")  # fmt: skip
        splits.label_names = self.label_names
        return splits

    def read_file(self, path: str, data):
        """Tagged sentences of one file; the first file read fixes the scheme the others must follow."""
        from ..data.tagged import read_tagged

        examples, scheme = read_tagged(path, self.scheme or self.scheme_setting)
        self.scheme = self.scheme or scheme
        if self.label_names:  # a trained model: it has an output for these tags only
            from .classify import check_known

            check_known([t for sentence in examples.labels for t in sentence], self.label_names, path)
        return examples

    def head_config(self) -> dict:
        return {"head": "token", "labels": self.label_names, "problem_type": None}

    def encode(self, model, examples, train: bool = False, note=lambda message: None):
        """Token ids (cached) and, per token, the tag of the word it starts (-100 on later sub-words)."""
        words = [self.words(x)[0] for x in examples.inputs]
        rows = word_tokens(model, words, note)
        tags = None
        if examples.labels is not None:
            index = {name: i for i, name in enumerate(self.label_names)}
            tags = [[index[t] for t in sentence] for sentence in examples.labels]
            kept = sum(len({w for w in ids if w >= 0}) for ids in rows["word_ids"])
            cut = sum(len(w) for w in words) - kept
            split = "train" if train else "validation" if "validation" not in self.cut_words else "test"  # runs encode them in this order
            self.cut_words[split] = cut
            if cut:
                note(f"{split}: {cut:,} of {sum(len(w) for w in words):,} words lie beyond model.max_length={model.max_length} tokens "
                     "(or have no sub-word) and are not scored; raise model.max_length to keep them")  # fmt: skip
        return TaggedItems(rows, tags)

    @staticmethod
    def words(x) -> tuple[list[str], list[tuple[int, int]] | None]:
        """A sentence's words and, for a text, each word's character span in it (WORD)."""
        if isinstance(x, str):
            found = list(WORD.finditer(x))
            return [m.group() for m in found], [m.span() for m in found]
        return list(x), None

    # --- loss and metrics -------------------------------------------------------------------------

    def loss_sum(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        # Summed over the tagged sub-words (the first of each word); the loop divides by their count.
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100, reduction="sum")

    def count(self, batch: dict) -> int:
        return int((batch["labels"] != -100).sum())

    def metric_state(self) -> list:
        return [[], []]  # gold tag sequences, predicted tag sequences (one per sentence)

    def update(self, state: list, logits: torch.Tensor, batch: dict) -> None:
        predicted, labels = logits.argmax(-1).cpu(), batch["labels"].cpu()
        for p, y in zip(predicted, labels):
            kept = y != -100
            state[0].append([self.label_names[i] for i in y[kept].tolist()])
            state[1].append([self.label_names[i] for i in p[kept].tolist()])

    def metrics(self, state: list) -> dict:
        return entity_metrics(state[0], state[1])

    # --- after training, testing, predicting ---------------------------------------------------------

    def after_training(self, model, validation_items, ctx) -> dict:
        return {}

    def test(self, model, examples, items, ctx) -> tuple[dict, dict]:
        from ..training.loop import evaluate

        metrics = evaluate(model, eval_loader(items, model), self, ctx.accelerator, "fp32")
        words = [self.words(x)[0] for x in examples.inputs]
        entity = most_frequent_type(examples.labels)
        rule = entity_metrics(examples.labels, capitalised_rule(words, entity))
        extra = {"baseline": {"rule": f"every run of capitalised words is one {entity} entity (the most frequent type)",
                              "f1": rule["f1"], "precision": rule["precision"], "recall": rule["recall"]},
                 "cut_words": dict(self.cut_words)}  # fmt: skip
        return metrics, extra

    def tags(self, model, examples, batch_size: int = 32) -> list[list[str]]:
        """Each sentence's tag per word: its first sub-word's likeliest tag ("O" for a word with no sub-word
        within model.max_length), in input order, in fp32."""
        words = [self.words(x)[0] for x in examples.inputs]
        rows = word_tokens(model, words)
        items = TaggedItems(rows, None, index=True)
        out: list[list[str] | None] = [None] * len(words)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            for batch in eval_loader(items, model, batch_size):
                index = batch.pop("index").tolist()
                batch.pop("labels")
                predicted = model(**{k: v.to(device) for k, v in batch.items()}).argmax(-1).cpu()
                for i, row in zip(index, predicted):
                    tags = ["O"] * len(words[i])
                    previous = -1
                    for position, w in enumerate(rows[i]["word_ids"]):
                        if w >= 0 and w != previous:
                            tags[w] = self.label_names[int(row[position])]
                        previous = w
                    out[i] = tags
        model.train(was_training)
        return out

    def predict(self, model, examples, ctx=None, detail: bool = False) -> dict[str, list]:
        """Per input: its entities (type, text, character start and end in the text) and the tag of each word."""
        tags = self.tags(model, examples, ctx.batch_size if ctx is not None else 32)
        entities = []
        for x, sentence in zip(examples.inputs, tags):
            words, spans = self.words(x)
            if spans is None:  # given as words: spans in the words joined by spaces
                starts = [sum(len(w) + 1 for w in words[:k]) for k in range(len(words))]
                spans, x = [(s, s + len(w)) for s, w in zip(starts, words)], " ".join(words)
            entities.append([{"type": type_, "text": x[spans[a][0] : spans[b][1]], "start": spans[a][0], "end": spans[b][1]}
                             for type_, a, b in get_entities(sentence)])  # fmt: skip
        return {"entities": entities, "tags": tags}

    def scores(self, model, examples, batch_size: int = 32):
        raise UserError("export checks a run's class probabilities; a token-classification model folder is already a plain "
                        "AutoModelForTokenClassification folder (or a PEFT adapter): load it as the README shows")  # fmt: skip

    def describe(self, m: dict) -> tuple[str, str | None]:
        return (f"test entity F1 {m['f1']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}",
                f"{m['entities']} test entities in {m['examples']} sentences")  # fmt: skip

    def before_save(self, model) -> None:
        pass

    def state(self) -> dict:
        return {"labels": self.label_names, "scheme": self.scheme}

    def restore(self, state: dict) -> None:
        self.label_names, self.scheme = list(state["labels"]), state.get("scheme")


class TaggedItems(RowItems):
    """Loader items over tokenized sentences: input_ids and labels (a tag id on the first sub-word of each
    word, -100 elsewhere); with `index`, each item's position (for outputs in input order)."""

    def __init__(self, rows, tags: list[list[int]] | None, index: bool = False):
        super().__init__(rows)
        self.tags, self.index = tags, index

    def __getitems__(self, indices: list[int]) -> list[dict]:
        batch = self.rows[indices]
        items = []
        for j, i in enumerate(indices):
            word_ids, labels, previous = batch["word_ids"][j], [], -1
            for w in word_ids:
                first = w >= 0 and w != previous
                labels.append(self.tags[i][w] if first and self.tags is not None else -100)
                previous = w
            items.append({"input_ids": batch["input_ids"][j], "labels": labels, **({"index": i} if self.index else {})})
        return items


def word_tokens(model, words: list[list[str]], note=lambda message: None):
    """Token ids of pre-split sentences, with the word each token belongs to (-1: a special token), cached."""
    import pyarrow as pa

    from ..data.tokens import cached_rows, content_hash, tokenizer_fingerprint

    tokenizer = model.tokenizer
    if not tokenizer.is_fast:
        raise UserError("token classification maps sub-words back to words with a fast tokenizer; this model's tokenizer is a "
                        "slow one: save the model with its tokenizer.json (a fast tokenizer)")  # fmt: skip

    def rows():
        for first in range(0, len(words), 512):
            enc = tokenizer(words[first : first + 512], is_split_into_words=True, truncation=True, max_length=model.max_length)
            for k, ids in enumerate(enc["input_ids"]):
                yield {"input_ids": ids, "word_ids": [-1 if w is None else w for w in enc.word_ids(k)], "length": len(ids)}

    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("word_ids", pa.list_(pa.int32())), ("length", pa.int32())])
    parts = ["word-tokens", content_hash(["\t".join(w) for w in words]), tokenizer_fingerprint(tokenizer), model.max_length]
    return cached_rows(parts, rows, schema, note, f"tokens of {len(words):,} sentences")
