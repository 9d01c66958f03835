"""Generation with a causal LM: learn responses (instruction fine-tuning) or plain text (continued
pre-training). The loss covers the response tokens, or every token of plain text."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UserError

SAMPLES = 8  # sample answers kept for the report


class LanguageModeling:
    """Next-token prediction on the tokens marked in `labels` (-100: context, not learned).

    Metrics: the mean loss per learned token, its perplexity, and next-token accuracy. The loss and
    metrics of every task that trains a causal LM's own head.
    """

    def loss_sum(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        # (B, T, V): the logits at position t predict the token at t + 1. Only the learned positions
        # are taken (and upcast): a long prompt before a short answer would otherwise cost a float
        # copy of every position's logits.
        targets = batch["labels"][:, 1:]
        learned = targets != -100
        return F.cross_entropy(logits[:, :-1][learned].float(), targets[learned], reduction="sum")

    def count(self, batch: dict) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())

    def metric_state(self) -> torch.Tensor:
        return torch.zeros(3, dtype=torch.float64)  # loss sum, learned tokens, correct next tokens

    def update(self, state: torch.Tensor, logits: torch.Tensor, batch: dict) -> None:
        targets = batch["labels"][:, 1:]
        learned = targets != -100
        state[0] += self.loss_sum(logits, batch).item()
        state[1] += learned.sum().item()
        state[2] += ((logits[:, :-1].argmax(-1) == targets) & learned).sum().item()

    def metrics(self, state: torch.Tensor) -> dict:
        tokens = max(state[1].item(), 1)
        loss = state[0].item() / tokens
        return {"perplexity": math.exp(min(loss, 50)), "token_accuracy": state[2].item() / tokens, "tokens": int(state[1])}


class Generation(LanguageModeling):
    name = "generate"
    head = "lm"
    metric = "loss"
    stopping_metrics = ("loss", "loss+general")
    headlines = ("exact_match", "token_accuracy")
    columns = [("exact_match", "exact match", "{:.4f}"), ("token_accuracy", "token accuracy", "{:.4f}"),
               ("perplexity", "perplexity", "{:.2f}")]  # fmt: skip

    def __init__(self, cfg=None):
        self.cfg = cfg
        self.label_names: list[str] = []

    def read(self, data, seed: int):
        from ..data.splits import load_generation_splits

        return load_generation_splits(data, seed)

    def read_file(self, path: str, data):
        from ..data.generation import read_generation

        return read_generation(path, data.text_column)

    def head_config(self) -> dict:
        return {"task": "generate", "prompt": None}

    def encode(self, model, examples, train: bool = False, note=lambda message: None) -> list[dict]:
        items = []
        for example in examples.inputs:
            items += model.encode_text(example["text"]) if "text" in example else [model.encode_chat(example["messages"])]
        return items

    def choose_demonstrations(self, model, splits, cfg) -> None:
        """In-context learning: demonstrations are earlier chat turns (prompt, then the reference response)."""
        chats = [x["messages"] for x in splits.train.inputs if "messages" in x]
        if cfg.icl.k is None or cfg.icl.k > len(chats):
            raise UserError(f"icl.shots={cfg.icl.shots} for generation must be a number up to the {len(chats)} "
                            "prompt/response examples in training; lower it")  # fmt: skip
        model.chat_demos = chats[: cfg.icl.k]  # the training split is already in a seeded order

    def after_training(self, model, validation_items, ctx) -> dict:
        return {}

    def test(self, model, examples, items, ctx) -> tuple[dict, dict]:
        """Loss, perplexity, next-token accuracy; exact match of greedy answers and a few samples."""
        from ..eval.generation import exact_match, generate
        from .sequence import test_on_items

        model.eval()
        test, _ = test_on_items(self, model, items, ctx)
        chats = [x["messages"] for x in examples.inputs if "messages" in x][: ctx.cfg.lm.generate_examples]
        if not chats:
            return test, {"samples": []}
        prompts = [model.prompt_tokens(model.chat_prompt(model.demo_turns() + m[:-1])) for m in chats]
        ctx.progress.start("generating answers", len(prompts))
        answers = generate(model, prompts, ctx.cfg.lm.max_new_tokens, progress=ctx.progress)
        ctx.progress.close()
        references = [m[-1]["content"] for m in chats]
        test |= {"exact_match": exact_match(answers, references), "generated_examples": len(answers)}
        samples = [{"prompt": m[-2]["content"][:500], "reference": r, "generated": a} for m, r, a in zip(chats, references, answers)]
        return test, {"samples": samples[:SAMPLES]}

    def answer(self, model, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy answers to user prompts, through the model's chat template and any demonstrations."""
        from ..eval.generation import generate

        ids = [model.prompt_tokens(model.chat_prompt(model.demo_turns() + [{"role": "user", "content": p}])) for p in prompts]
        return generate(model, ids, max_new_tokens)

    def predict(self, model, examples, ctx=None, detail: bool = False) -> dict[str, list]:
        max_new_tokens = ctx.cfg.lm.max_new_tokens if ctx is not None else 64
        return {"generated": self.answer(model, list(examples.inputs), max_new_tokens)}

    def describe(self, m: dict) -> tuple[str, str | None]:
        match = f"  exact match {m['exact_match']:.4f} ({m['generated_examples']} answers)" if "exact_match" in m else ""
        return f"test loss {m['loss']:.4f}  perplexity {m['perplexity']:.2f}{match}", None

    def before_save(self, model) -> None:
        pass

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass
