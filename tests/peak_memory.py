"""Train one regime for a few steps on random tokens and print its peak memory as JSON.

Run by the slow test in test_plan.py, in a fresh process per model and regime (a model freed by
an earlier run in the same process was not always given back in full, which lowered the next
run's numbers):

    MALLOC_MMAP_THRESHOLD_=131072 python tests/peak_memory.py --model minilm-l6 --regime full

On a CPU "peak memory" is the process's resident set. Measured: the high-water mark of the
resident set (VmHWM, reset just before the model is loaded through /proc/self/clear_refs) minus
the resident set at that moment. Before that, a warm-up loads the model once, runs the regime's
code on a tiny batch and throws it away, so that lazily imported modules and the BLAS and thread
pools that a first matmul allocates are part of the baseline rather than of the measurement.
What is left is what the plan counts: the weights, plus everything training allocates.

MALLOC_MMAP_THRESHOLD_ makes glibc return freed tensors to the operating system at once (as the
CUDA caching allocator's max_memory_allocated, the GPU equivalent, ignores freed blocks);
without it glibc keeps freed blocks in its heap and the resident set overstates live memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoConfig, AutoModelForSequenceClassification

from transferkit.config import ModelConfig
from transferkit.methods import freeze, full, lora, wrap_with_peft
from transferkit.models.text import TextClassifier, load_text_classifier, quiet_transformers
from transferkit.training.features import HeadOnFeatures
from transferkit.training.optim import param_groups


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    # "5" resets the resident-set high-water mark to the current resident set (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


class ScoreOnFeatures(torch.nn.Module):
    """A decoder's `score` layer, called the way HeadOnFeatures is: trainee(features=...)."""

    def __init__(self, score: torch.nn.Module):
        super().__init__()
        self.score = score

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.score(features)


def load(model_name: str) -> tuple[TextClassifier, list[str] | None]:
    """MiniLM through transferkit; SmolLM2 built from its GGUF's config. Also: the head's modules
    for a decoder (transferkit's own head split covers encoders only)."""
    if model_name == "minilm-l6":
        # As `transferkit train` loads it: attention dropout off (the fused attention kernel runs).
        return load_text_classifier("minilm-l6", ["a", "b"], attention_dropout_p=ModelConfig.attention_dropout), None
    # SmolLM2 ships only as GGUF. The weights' values do not change memory, so the model is built
    # from the real config with random weights (dequantising the GGUF takes ~18 s and its
    # transient copies would blur the baseline).
    quiet_transformers()
    folder, gguf = os.path.split(model_name)
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf)
    config.num_labels, config.pad_token_id = 2, 0
    no_tokenizer = SimpleNamespace(model_max_length=None)  # random token ids feed the model directly
    return TextClassifier(AutoModelForSequenceClassification.from_config(config, dtype=torch.float32), no_tokenizer), ["score"]


def prepare(model: TextClassifier, head_modules: list[str] | None, regime: str, batch: dict, examples: int):
    """Apply `regime` as transferkit does; returns the module to train and its inputs per step."""
    if regime == "freeze":
        if head_modules is None:
            freeze.apply(model)
            features_of, trainee = model.forward_features, HeadOnFeatures(model)
        else:  # a decoder: the features are the last token's hidden state
            model.hf.requires_grad_(False)
            model.hf.score.requires_grad_(True)
            features_of = lambda **b: model.hf.model(**b).last_hidden_state[:, -1]  # noqa: E731
            trainee = ScoreOnFeatures(model.hf.score)
        model.eval()
        with torch.no_grad():  # as training/features.py: the backbone runs once, without autograd
            cache = torch.cat([features_of(**batch).float() for _ in range(max(1, examples // len(batch["input_ids"])))])
        return trainee, lambda step: {"features": cache[(32 * step) % len(cache) :][:32]}
    if regime == "full":
        full.apply(model)
    elif head_modules is None:
        wrap_with_peft(partial(lora.peft_config, lora.Config()))(model)  # as methods/lora.py's stage does
    else:  # the settings of methods/lora.py, with a decoder's head
        cfg = lora.Config()
        peft_config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules="all-linear",
            modules_to_save=head_modules,
        )
        model.hf = get_peft_model(model.hf, peft_config)
    model.train()
    return model, lambda step: batch


def train(model_name: str, regime: str, batch_size: int, seq: int, steps: int, examples: int) -> dict:
    torch.manual_seed(0)
    gc.collect()
    before = status_kib("VmRSS")
    reset_peak()
    model, head_modules = load(model_name)
    batch = {
        "input_ids": torch.randint(1000, model.config.vocab_size, (batch_size, seq)),
        "attention_mask": torch.ones(batch_size, seq, dtype=torch.long),
    }
    trainee, inputs = prepare(model, head_modules, regime, batch, examples)
    optimizer = torch.optim.AdamW(param_groups(trainee, 1e-4, 0.01), lr=1e-4)
    for step in range(steps if regime != "freeze" else 20):
        features = inputs(step)
        logits = trainee(**features)
        loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 2, (len(logits),)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in trainee.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {
        "regime": regime,
        "peak_bytes": (status_kib("VmHWM") - before) * 1024,
        "baseline_bytes": before * 1024,
        "trainable": sum(p.numel() for p in trainee.parameters() if p.requires_grad),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="minilm-l6, or the path of SmolLM2's .gguf file")
    parser.add_argument("--regime", choices=["full", "lora", "freeze"], required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="2: the second forward pass runs with the optimizer state allocated")
    parser.add_argument("--examples", type=int, default=64, help="examples whose features freeze caches")
    args = parser.parse_args()
    train(args.model, args.regime, 2, 8, 1, 2)  # warm-up: a tiny batch, nothing reported
    print(json.dumps(train(args.model, args.regime, args.batch, args.seq, args.steps, args.examples)))


if __name__ == "__main__":
    main()
