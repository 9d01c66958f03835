"""Catastrophic forgetting: how much general ability a run cost, measured before and after.

Causal LMs: perplexity on held-out general text. Encoders: how far the representations of
general text moved (linear CKA between the embeddings before and after; Kornblith et al. 2019,
1.0 is unchanged) and the accuracy of a linear probe on a second task, trained on the features
before and on the features after. Measured on text never replayed in training.
"""

from __future__ import annotations

import torch

from ..data.corpus import general_parts
from ..data.batching import make_loader
from ..tasks.generate import LanguageModeling
from ..training.loop import evaluate

CKA_PASSAGES = 200


def text_blocks(model, passages: list[str], tokens: int) -> list[dict]:
    """Language-model items: the passages' tokens end to end, cut into blocks of model.max_length."""
    ids: list[int] = []
    for passage in passages:
        ids += model.tokenizer(passage)["input_ids"] + [model.tokenizer.eos_token_id]
        if len(ids) >= tokens:
            break
    ids = ids[:tokens]
    blocks = [ids[i : i + model.max_length] for i in range(0, len(ids), model.max_length)]
    return [{"input_ids": b, "labels": list(b)} for b in blocks if len(b) > 1]


def language_model_metrics(model, items: list[dict], accelerator, precision: str) -> dict:
    """Loss, perplexity and next-token accuracy of a causal LM on language-model items."""
    loader = make_loader(items, 16, shuffle=False, seed=0, pad_id=model.pad_id)
    return evaluate(model, loader, LanguageModeling(), accelerator, precision)


def perplexity(model, items: list[dict], accelerator, precision: str) -> float:
    return language_model_metrics(model, items, accelerator, precision)["perplexity"]


class CausalForgetting:
    """Perplexity of held-out general text before training and after."""

    def __init__(self, model, cfg, accelerator, precision: str):
        held_out, _ = general_parts(cfg.forgetting.corpus)
        self.corpus, self.accelerator, self.precision = cfg.forgetting.corpus, accelerator, precision
        self.items = text_blocks(model, held_out, cfg.forgetting.tokens)
        self.before = perplexity(model, self.items, accelerator, precision)

    def measure(self, model) -> dict:
        after = perplexity(model, self.items, self.accelerator, self.precision)
        return {
            "corpus": self.corpus,
            "tokens": sum(len(i["input_ids"]) for i in self.items),
            "general_perplexity_before": self.before,
            "general_perplexity_after": after,
            "general_perplexity_change": after / self.before - 1,
        }


class EncoderForgetting:
    """Representation drift (linear CKA) on general text, and a second task's linear-probe accuracy."""

    def __init__(self, model, cfg, accelerator, probe_examples):
        held_out, _ = general_parts(cfg.forgetting.corpus)
        self.corpus, self.accelerator = cfg.forgetting.corpus, accelerator
        self.texts = held_out[:CKA_PASSAGES]
        self.probe = probe_examples  # (train Examples, test Examples, name) or None
        self.before = embed(model, self.texts, accelerator)
        self.probe_before = self._probe_accuracy(model)

    def measure(self, model) -> dict:
        after = embed(model, self.texts, self.accelerator)
        result = {"corpus": self.corpus, "texts": len(self.texts), "representation_cka": linear_cka(self.before, after)}
        if self.probe is not None:
            probe_after = self._probe_accuracy(model)
            result |= {"probe_task": self.probe[2], "probe_accuracy_before": self.probe_before,
                       "probe_accuracy_after": probe_after, "probe_accuracy_change": probe_after - self.probe_before}  # fmt: skip
        return result

    def _probe_accuracy(self, model) -> float | None:
        if self.probe is None:
            return None
        train, test, _ = self.probe
        return probe_accuracy(embed(model, train.inputs, self.accelerator), train.labels, embed(model, test.inputs, self.accelerator), test.labels)


@torch.no_grad()
def embed(model, texts: list[str], accelerator, batch_size: int = 32) -> torch.Tensor:
    """Mean-pooled last hidden states of a text encoder (adapters included), fp32, in eval mode: (N, C)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        enc = model.tokenizer(texts[start : start + batch_size], truncation=True, max_length=model.max_length, padding=True, return_tensors="pt")
        enc = {k: v.to(accelerator.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        hidden = model.hf(**enc, output_hidden_states=True).hidden_states[-1]
        hidden = hidden[:, -enc["input_ids"].shape[1] :]  # prompt tuning prepends virtual tokens: skip them
        mask = enc["attention_mask"][..., None].to(hidden.dtype)
        out.append(((hidden * mask).sum(1) / mask.sum(1)).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centered kernel alignment of two (N, C) representations of the same N inputs."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    cross = (y.T @ x).norm() ** 2
    return (cross / ((x.T @ x).norm() * (y.T @ y).norm())).item()


def probe_accuracy(train_x: torch.Tensor, train_y: list, test_x: torch.Tensor, test_y: list, steps: int = 100) -> float:
    """Test accuracy of a logistic-regression probe (L-BFGS, standardised features) trained on train_x."""
    names = sorted(set(train_y))
    index = {n: i for i, n in enumerate(names)}
    targets = torch.tensor([index[y] for y in train_y])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    probe = torch.nn.Linear(a.shape[1], len(names)).double()
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(a.double()), targets) + 1e-3 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = probe(b.double()).argmax(-1).tolist()
    return sum(names[p] == y for p, y in zip(predicted, test_y)) / max(len(test_y), 1)


def probe_splits(cfg, seed: int = 0):
    """(train, test, name) of the encoder's probe task: a second built-in dataset, or None if not installed."""
    from .. import assets
    from ..data.splits import stratified_split, stratified_subset
    from ..data.builtin import read_builtin

    name = cfg.forgetting.probe or ("bbc-news" if cfg.data.name == "tweet-sentiment" else "tweet-sentiment")
    if name not in assets.DATASETS or assets.DATASETS[name].modality != "text":
        from ..errors import UserError

        raise UserError(f"forgetting.probe must be a built-in text dataset (got '{name}'): bbc-news or tweet-sentiment")
    if not assets.DATASETS[name].installed:
        return None
    pool = read_builtin(name)
    pool = pool.subset(stratified_subset(pool.labels, cfg.forgetting.probe_size, seed, "forgetting.probe_size"))
    parts = stratified_split(pool.labels, {"test": 1 / 3}, seed)
    return pool.subset(parts["train"]), pool.subset(parts["test"]), name


# Model kind -> how its forgetting is measured: perplexity for a causal LM, representations for an encoder.
FORGETTING = {"causal": lambda model, cfg, accelerator, precision: CausalForgetting(model, cfg, accelerator, precision),
              "encoder": lambda model, cfg, accelerator, precision: EncoderForgetting(model, cfg, accelerator, probe_splits(cfg))}  # fmt: skip


def can_measure(model) -> bool:
    """Whether forgetting has a measure for this kind of model (text models: yes; image networks: not yet)."""
    return model.kind in FORGETTING


def start_forgetting(cfg, model, accelerator, precision: str, progress):
    """Measure general ability before any stage changes the model; None without forgetting.corpus."""
    if not cfg.forgetting.corpus:
        return None
    progress.note(f"measuring general ability on {cfg.forgetting.corpus} before training")
    return FORGETTING[model.kind](model, cfg, accelerator, precision)


def replay_items(cfg, model, n_task: int) -> list[dict]:
    """General-text blocks to mix into training (language-model loss): `replay.ratio` of the mixed training set."""
    from ..data.corpus import read_passages
    from ..errors import UserError

    corpus = cfg.replay.corpus or cfg.forgetting.corpus
    # Replaying the forgetting corpus uses its other half: forgetting is never measured on replayed text.
    replay = general_parts(corpus)[1] if corpus == cfg.forgetting.corpus else read_passages(corpus)
    wanted = max(1, round(cfg.replay.ratio / (1 - cfg.replay.ratio) * n_task))
    blocks = text_blocks(model, replay, wanted * model.max_length)
    if not blocks:
        raise UserError(f"replay corpus '{corpus}' holds no text to replay; give a larger corpus")
    return [blocks[i % len(blocks)] for i in range(wanted)]


def general_validation(cfg, model, accelerator, precision: str):
    """For metric loss+general: the loss on a small held-out slice of general text, at each validation."""
    held_out, _ = general_parts(cfg.forgetting.corpus)
    items = text_blocks(model, held_out[::-1], min(cfg.forgetting.tokens, 16 * model.max_length))
    return lambda _: {"general_loss": language_model_metrics(model, items, accelerator, precision)["loss"]}
