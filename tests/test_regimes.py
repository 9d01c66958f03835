"""One table, every regime, the same invariants (after peft's tests/test_custom_models.py)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TOY_LABELS, tiny_overrides
from transferkit import load_config, train
from transferkit.methods import METHODS
from transferkit.models.text import load_text_classifier
from transferkit.training.features import HeadOnFeatures

H, I, L, K = 32, 64, 2, len(TOY_LABELS)  # tiny BERT: hidden, intermediate, layers, labels
R, PROMPT_TOKENS = 16, 20  # lora.r and prompt.num_virtual_tokens defaults


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


HEAD = linear(H, H) + linear(H, K)  # BERT pooler + classifier
LORA_PER_LAYER = 4 * R * (H + H) + R * (H + I) + R * (I + H)  # q, k, v, attention out; MLP in, MLP out


def full_count(vocab: int, positions: int = 64) -> int:
    embeddings = vocab * H + positions * H + 2 * H + 2 * H  # words, positions, token types, LayerNorm
    layer = 4 * linear(H, H) + 2 * H + linear(H, I) + linear(I, H) + 2 * H
    return embeddings + L * layer + HEAD


def expected_trainable(regime: str, vocab: int) -> list[int]:
    """Trainable parameters per stage, computed from the architecture, not from the code under test."""
    return {
        "full": [full_count(vocab)],
        "freeze": [HEAD],
        "lora": [L * LORA_PER_LAYER + HEAD],
        "prompt": [PROMPT_TOKENS * H + HEAD],
        "staged": [HEAD, full_count(vocab)],
    }[regime]


def toy_batch(model):
    enc = model.tokenizer(["the big apple pear", "a red bus car"], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], torch.tensor([0, 1])


@pytest.mark.parametrize("regime", list(METHODS))
def test_regime_invariants(regime, tiny_bert, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_bert, tmp_path / "unused.csv", tmp_path, regime))
    model = load_text_classifier(str(tiny_bert), TOY_LABELS)
    vocab = model.hf.config.vocab_size
    for stage, expected in zip(METHODS[regime].stages(cfg), expected_trainable(regime, vocab), strict=True):
        stage.apply(model)
        trainee = HeadOnFeatures(model) if stage.cached else model
        trainable = {n: p for n, p in trainee.named_parameters() if p.requires_grad}
        # 1. exactly the expected parameters train
        assert sum(p.numel() for p in trainable.values()) == expected
        frozen_before = {n: p.detach().clone() for n, p in trainee.named_parameters() if not p.requires_grad}

        ids, mask, labels = toy_batch(model)
        if stage.cached:
            with torch.no_grad():
                features = model.forward_features(ids, mask)
            logits = trainee(features)
        else:
            logits = trainee(ids, mask)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        # 4. every trainable parameter gets a finite, non-zero gradient
        for name, p in trainable.items():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert any(p.grad.abs().sum() > 0 for p in trainable.values())
        torch.optim.AdamW(trainable.values(), lr=1e-2).step()
        # 2. frozen weights are bit-identical after the step
        for name, p in trainee.named_parameters():
            if name in frozen_before:
                assert torch.equal(p, frozen_before[name]), name
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("regime", list(METHODS))
def test_regime_learns_separable_task(regime, tiny_bert, toy_csv, tmp_path):
    extra = {"train.epochs": 30} if regime in ("freeze", "prompt") else {"train.epochs": 8, "train.lr": 3e-3}
    if regime == "lora":
        extra["train.lr"] = 1e-2
    cfg = load_config(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "run", regime, **extra))
    run = train(cfg)
    assert run.test_accuracy >= 0.9, json.dumps(run.metrics["stages"])
    first_loss = json.loads((run.dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert run.metrics["validation"]["loss"] < first_loss
