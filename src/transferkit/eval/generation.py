"""Greedy generation from a causal LM, and exact match against reference answers."""

from __future__ import annotations

import re

import torch


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 8, progress=None) -> list[str]:
    """Greedy continuations of prompt token ids, decoded without special tokens, in input order."""
    hf, pad = model.hf, model.pad_id
    device = next(hf.parameters()).device
    was_training = hf.training
    hf.eval()
    texts = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        # Left padding: every prompt ends where generation starts.
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                          pad_token_id=pad, eos_token_id=model.tokenizer.eos_token_id)  # fmt: skip
        texts += model.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        if progress:
            progress.step(n=len(batch))
    hf.train(was_training)
    return [t.strip() for t in texts]


def normalise(text: str) -> str:
    """Case, surrounding space and punctuation, and runs of white space do not count."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .!?\"'")


def exact_match(predictions: list[str], references: list[str]) -> float:
    return sum(normalise(p) == normalise(r) for p, r in zip(predictions, references)) / max(len(references), 1)
