"""Question answering with a causal LM: the model reads the context and the question and answers in its
own words; the answer is scored by exact match and token F1 against every gold answer, after the SQuAD
normalisation, as the span head's are (eval/spans.py). So `icl` (no training) and a fine-tuned causal
LM sit beside an encoder's span head on the same questions, in the same columns.

The data and its splits are extractive QA's (data/qa.py: SQuAD JSON or a flat table, split by
context). Training learns the first gold answer as the response to the question, through the model's
chat template where it has one. A context too long for model.max_length is cut to the stretch around
its answer where the answer is learned (or its loss measured), and to its beginning where the model
answers (test, `predict`); the run says how many were cut.
"""

from __future__ import annotations

import random

import torch

from ..errors import UserError
from .base import split_being_encoded
from .generate import Generation

ANSWER_TOKENS = 32  # the longest answer generated, in tokens (SQuAD answers are a few words)
MARGIN = 4  # tokens kept free when cutting a context: a cut text may tokenise a little longer


def question_turn(question: str, context: str) -> dict:
    """The user's turn: the context, then the question (the texts as the user gave them)."""
    return {"role": "user", "content": f"{context}\n\nQuestion: {question}\nAnswer with the words of the text above."}


class GenerativeQA(Generation):
    name = "qa"
    joins_pairs = True  # question and context are written into one prompt
    headlines = ("f1",)
    columns = [("f1", "F1", "{:.2f}"), ("exact_match", "exact match", "{:.2f}"), ("perplexity", "perplexity", "{:.2f}")]

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.cut: dict[str, int] = {}  # per split: contexts cut to fit model.max_length

    # --- data ---------------------------------------------------------------------------------

    def read(self, data, seed: int):
        from ..data.qa import contexts_of
        from ..data.splits import load_splits

        splits = load_splits(data, seed, read=lambda name: self.read_file(name, data), stratify=False, groups=contexts_of)
        unanswerable = sum(not gold.answers for gold in splits.train.labels)
        if unanswerable:
            raise UserError(f"the training data has {unanswerable} unanswerable question(s) (SQuAD 2.0); a causal LM's answers "
                            "are scored against gold spans only: leave them out, or use an encoder's span head (--model minilm-l6)")  # fmt: skip
        return splits

    def read_file(self, path: str, data):
        from ..data.qa import read_qa

        return read_qa(path, data)

    def head_config(self) -> dict:
        return {"task": "generate", "prompt": None}

    def encode(self, model, examples, train: bool = False, note=lambda message: None) -> list[dict]:
        """Each question's chat, its first gold answer as the response (learned; the prompt is not)."""
        golds = examples.labels
        items, cut = [], 0
        for i, (question, context) in enumerate(zip(examples.inputs, examples.pairs)):
            answer = golds[i].answers[0] if golds is not None and golds[i].answers else None
            turn, was_cut = self._fitted(model, question, context, answer)
            cut += was_cut
            items.append(model.encode_chat([turn, {"role": "assistant", "content": answer[0] if answer else ""}]))
        self._note_cut(train, cut, len(items), model, note)
        return items

    def _note_cut(self, train: bool, cut: int, total: int, model, note) -> None:
        split = split_being_encoded(train, self.cut)
        self.cut[split] = cut
        if cut:
            answered = "" if train else ", and to their beginning to answer from"
            note(f"{split}: {cut:,} of {total:,} contexts are longer than model.max_length={model.max_length} allows: cut to the "
                 f"stretch around the answer for the loss{answered}; raise model.max_length to keep them whole")  # fmt: skip

    def _fitted(self, model, question: str, context: str, answer: tuple[str, int] | None):
        """(The user's turn, whether its context was cut): the context cut, where the chat would not fit
        model.max_length, to the tokens around the answer (training: prompt and answer must fit) or its
        first tokens (answering: the prompt must fit; the answer may run on into the model's context)."""
        tokenizer = model.tokenizer
        special = not tokenizer.chat_template

        def length(text: str) -> int:
            return len(tokenizer(model.chat_prompt(model.demo_turns() + [question_turn(question, text)]), add_special_tokens=special)["input_ids"])

        response = len(tokenizer(answer[0], add_special_tokens=False)["input_ids"]) + 1 if answer else 1
        room = model.max_length - length("") - response - MARGIN
        pieces = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(pieces) <= room:
            return question_turn(question, context), False
        if room < 1:
            raise UserError(f"question '{question[:60]}' leaves no room for its context within model.max_length={model.max_length}; "
                            f"raise model.max_length (the model holds {model.context_length})")  # fmt: skip
        first = 0
        if answer is not None:  # centre the stretch on the answer's first token
            at = next((t for t, (_, end) in enumerate(pieces) if end > answer[1]), 0)
            first = max(0, min(at - room // 2, len(pieces) - room))
        return question_turn(question, context[pieces[first][0] : pieces[first + room - 1][1]]), True

    def choose_demonstrations(self, model, splits, cfg) -> None:
        """In-context learning: demonstrations are earlier questions with their first gold answer."""
        train = splits.train
        k = cfg.icl.k
        if k is None or k > len(train):
            raise UserError(f"icl.shots={cfg.icl.shots} for question answering must be a number up to the {len(train)} "
                            "training questions; lower it")  # fmt: skip
        # Seeded, and from k different contexts where there are as many: the training split is in file order.
        order = list(range(len(train)))
        random.Random(cfg.train.seed).shuffle(order)
        seen, firsts, others = set(), [], []
        for i in order:
            (others if train.pairs[i] in seen else firsts).append(i)
            seen.add(train.pairs[i])
        chosen = (firsts + others)[:k]
        model.chat_demos = [[question_turn(train.inputs[i], train.pairs[i]), {"role": "assistant", "content": train.labels[i].answers[0][0]}]
                            for i in chosen]  # fmt: skip

    # --- testing and predicting ---------------------------------------------------------------

    def test(self, model, examples, items, ctx) -> tuple[dict, dict]:
        """Loss and perplexity of the gold answers; exact match and F1 of the greedy answers."""
        from ..eval.spans import best_over_golds
        from .sequence import test_on_items

        model.eval()
        test, _ = test_on_items(self, model, items, ctx)
        answers = self.answer_questions(model, list(examples.inputs), list(examples.pairs), ctx)
        scores = [best_over_golds(answer, [t for t, _ in gold.answers]) for answer, gold in zip(answers, examples.labels)]
        n = max(len(scores), 1)
        test |= {"exact_match": 100 * sum(em for em, _ in scores) / n, "f1": 100 * sum(f1 for _, f1 in scores) / n,
                 "examples": len(scores)}  # fmt: skip
        samples = [{"prompt": q[:300], "reference": gold.answers[0][0] if gold.answers else "", "generated": a}
                   for q, gold, a in zip(examples.inputs, examples.labels, answers)]  # fmt: skip
        return test, {"samples": samples[:8], "contexts_cut": dict(self.cut)}

    def answer_questions(self, model, questions: list[str], contexts: list[str], ctx=None) -> list[str]:
        """Greedy answers, each context cut to its beginning where it does not fit."""
        from ..eval.generation import generate

        turns = [self._fitted(model, q, c, None)[0] for q, c in zip(questions, contexts)]
        ids = [model.prompt_tokens(model.chat_prompt(model.demo_turns() + [turn])) for turn in turns]
        progress = ctx.progress if ctx is not None else None
        if progress is not None:
            progress.start("answering", len(ids))
        with torch.no_grad():
            answers = generate(model, ids, ANSWER_TOKENS, progress=progress)
        if progress is not None:
            progress.close()
        return [a.strip().split("\n")[0].strip() for a in answers]  # the answer is its first line: a base model runs on

    def predict(self, model, examples, ctx=None, detail: bool = False) -> dict[str, list]:
        """The answer to each question and where it stands in the context (-1: not a span of it)."""
        if examples.pairs is None:
            raise UserError("question answering needs each question's context: give --context with --question, or a "
                            "context column beside the question column")  # fmt: skip
        answers = self.answer_questions(model, list(examples.inputs), list(examples.pairs), ctx)
        return {"answer": answers, "answer_start": [c.find(a) if a else -1 for a, c in zip(answers, examples.pairs)]}

    def describe(self, m: dict) -> tuple[str, str | None]:
        return f"test F1 {m['f1']:.2f}  exact match {m['exact_match']:.2f}", f"{m['examples']} test questions"
