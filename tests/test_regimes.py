"""One table, every regime, the same invariants (after peft's tests/test_custom_models.py)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import CNN_WIDTHS, IMAGE_LABELS, TOY_LABELS, check_step, image_overrides, tiny_overrides
from transferkit import load_config, train
from transferkit.errors import UserError
from transferkit.methods import REGIMES

TEXT_REGIMES = [r for r, regime in REGIMES.items() if "encoder" in regime.kinds]  # icl prompts a causal LM: tests/test_causal.py
from transferkit.models.text import load_text_classifier
from transferkit.models.vision import load_image_classifier
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
        "scratch": [full_count(vocab)],
    }[regime]


def toy_batch(model):
    enc = model.tokenizer(["the big apple pear", "a red bus car"], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], torch.tensor([0, 1])


@pytest.mark.parametrize("regime", TEXT_REGIMES)
def test_regime_invariants(regime, tiny_bert, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_bert, tmp_path / "unused.csv", tmp_path, regime))
    model = load_text_classifier(str(tiny_bert), TOY_LABELS)
    vocab = model.hf.config.vocab_size
    for stage, expected in zip(REGIMES[regime].stages(cfg), expected_trainable(regime, vocab), strict=True):
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
        # 4. every trainable parameter gets a finite, non-zero gradient; 2. frozen weights are
        # bit-identical after the step
        assert all(p.grad is not None for p in trainable.values())
        assert any(p.grad.abs().sum() > 0 for p in trainable.values())
        check_step(trainee, trainable, frozen_before)
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("regime", TEXT_REGIMES)
def test_regime_learns_separable_task(regime, tiny_bert, toy_csv, tmp_path):
    extra = {"train.epochs": 30} if regime in ("freeze", "prompt") else {"train.epochs": 8, "train.lr": 3e-3}
    if regime == "lora":
        extra["train.lr"] = 1e-2
    cfg = load_config(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "run", regime, **extra))
    run = train(cfg)
    assert run.test_accuracy >= 0.9, json.dumps(run.metrics["stages"])
    first_loss = json.loads((run.dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert run.metrics["validation"]["loss"] < first_loss


# --- the same invariants on images: a tiny CNN (SmallCNN, widths 4 and 8) -----------------------

IMAGE_REGIMES = ["full", "freeze", "lora", "staged", "scratch"]  # prompt tuning is for text models
C1, C2 = CNN_WIDTHS
CNN_HEAD = linear(C2, K)
CNN_ALL = 3 * C1 * 9 + 2 * C1 + C1 * C2 * 9 + 2 * C2 + CNN_HEAD  # 3x3 convs (no bias), BN weight + bias, head
CNN_LORA = R * 3 * 9 + C1 * R + R * C1 * 9 + C2 * R  # per conv: A is (r, in, 3, 3), B is (out, r, 1, 1)


def expected_image_trainable(regime: str) -> list[int]:
    return {
        "full": [CNN_ALL],
        "freeze": [CNN_HEAD],
        "lora": [CNN_LORA + CNN_HEAD],
        "staged": [CNN_HEAD, CNN_ALL],
        "scratch": [CNN_ALL],
    }[regime]


def norm_statistics(model) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in model.named_buffers() if "running" in n}


@pytest.mark.parametrize("regime", IMAGE_REGIMES)
def test_image_regime_invariants(regime, tiny_cnn, tmp_path):
    cfg = load_config(None, image_overrides(tiny_cnn, tmp_path / "unused", tmp_path, regime))
    model = load_image_classifier(str(tiny_cnn), IMAGE_LABELS, 16)
    pixels, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    for stage, expected in zip(REGIMES[regime].stages(cfg), expected_image_trainable(regime), strict=True):
        stage.apply(model)
        trainee = HeadOnFeatures(model) if stage.cached else model
        trainable = {n: p for n, p in trainee.named_parameters() if p.requires_grad}
        # 1. exactly the expected parameters train
        assert sum(p.numel() for p in trainable.values()) == expected
        frozen_before = {n: p.detach().clone() for n, p in trainee.named_parameters() if not p.requires_grad}
        statistics_before = norm_statistics(model)

        if stage.cached:
            with torch.no_grad():
                features = model.eval().forward_features(pixels)
            trainee.train()
            logits = trainee(features)
        else:
            logits = trainee.train()(pixels)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        # 4. every trainable parameter gets a finite gradient; 2. frozen weights are bit-identical
        # after the step; so are the batch-norm statistics of every pre-trained backbone, frozen or
        # fine-tuned (batch norm stays in eval mode: a few small batches of new data would replace
        # them), and only scratch's random network moves them
        check_step(trainee, trainable, frozen_before)
        statistics_after = norm_statistics(model)
        moved = [n for n in statistics_before if not torch.equal(statistics_before[n], statistics_after[n])]
        assert (moved == []) == (regime != "scratch"), moved
        model.zero_grad(set_to_none=True)


def test_image_lora_at_init_equals_the_base_model(tiny_cnn, tmp_path):
    # 3. LoRA's B starts at zero: the adapted network computes what the base network computes
    cfg = load_config(None, image_overrides(tiny_cnn, tmp_path / "unused", tmp_path, "lora"))
    model = load_image_classifier(str(tiny_cnn), IMAGE_LABELS, 16).eval()
    pixels = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        before = model(pixels)
        REGIMES["lora"].stages(cfg)[0].apply(model)
        assert torch.allclose(model.eval()(pixels), before, atol=1e-6)


@pytest.mark.parametrize("regime", IMAGE_REGIMES)
def test_image_regime_learns_separable_task(regime, tiny_cnn, toy_images, tmp_path):
    extra = {"train.epochs": 30 if regime == "freeze" else 8, "train.lr": 1e-2}
    run = train(load_config(None, image_overrides(tiny_cnn, toy_images, tmp_path / "run", regime, **extra)))
    assert run.test_accuracy >= 0.9, json.dumps(run.metrics["stages"])
    first_loss = json.loads((run.dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert run.metrics["validation"]["loss"] < first_loss


def test_scratch_really_starts_from_random_weights(tiny_bert, tmp_path):
    from transferkit.methods import scratch

    model = load_text_classifier(str(tiny_bert), TOY_LABELS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scratch.apply(model)
    after = dict(model.named_parameters())
    matrices = [n for n, p in before.items() if p.ndim >= 2]  # embeddings and every linear layer
    assert all(not torch.equal(before[n], after[n]) for n in matrices), "pre-trained weights must be replaced"
    assert all(p.requires_grad for p in after.values())


def test_attention_dropout_is_off_by_default_and_the_models_own_on_request(tiny_bert, toy_csv, tmp_path):
    """Off by default so that the fused attention kernels run; empty keeps the pre-trained config's 0.1."""
    from helpers import model_and_task

    def attention_dropouts(extra: dict) -> set[float]:
        model, _ = model_and_task(load_config(None, tiny_overrides(tiny_bert, toy_csv, tmp_path, "full", **extra)), TOY_LABELS)
        return {m.dropout.p for name, m in model.hf.named_modules() if name.endswith("attention.self")}

    assert attention_dropouts({}) == {0.0}
    assert attention_dropouts({"model.attention_dropout": None}) == {0.1}
    assert attention_dropouts({"model.attention_dropout": 0.2}) == {0.2}
    with pytest.raises(UserError, match="attention_dropout"):
        load_config(None, ["model.attention_dropout=1.5"])
