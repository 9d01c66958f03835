"""Calibration of a causal LM's label scores: small models lean toward some labels whatever the input.

Each mode estimates that lean as a log-prior over the labels and subtracts it from the scores
normalised over the labels, log p(label | x) - log prior(label):

- `contextual` (Zhao et al. 2021): the prior is p(label | a content-free input, "N/A"), under the
  same prompt.
- `domain` (Fei et al. 2023): the mean of p(label | x') over content-free inputs x' made of random
  words of the training texts, as many as a text has on average (the prompt's lean and the
  domain's: "N/A" holds no word of either).
- `batch` (Zhou et al. 2024): the mean of p(label | x) over the queries scored together; no extra
  input at all. `predict` takes the mean over the inputs it is given, or, for
  fewer than MIN_BATCH of them, the mean a run stored over its test inputs.

`none` leaves the scores as they are. The functions are pure: tensors in, tensors out.
"""

from __future__ import annotations

import random

import torch

MODES = ("none", "contextual", "domain", "batch")
DOMAIN_SAMPLES = 20  # content-free inputs of random in-domain words (Fei et al. 2023 average over 20)
MIN_BATCH = 16  # fewer inputs than this at predict time: batch calibration uses the run's stored test mean


def contextual_prior(free: torch.Tensor) -> torch.Tensor:
    """(..., L) log p(label | content-free input) from its raw scores (..., L)."""
    return free.log_softmax(-1)


def domain_prior(free: torch.Tensor) -> torch.Tensor:
    """(..., L) log of the mean probability of each label over M content-free inputs, from (..., M, L)."""
    return free.softmax(-1).mean(-2).log()


def batch_prior(scores: torch.Tensor) -> torch.Tensor:
    """(L,) log of the mean probability of each label over the N queries of (N, L)."""
    return scores.softmax(-1).mean(0).log()


def calibrated(scores: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
    """(N, L) log p(label | x) - prior, with a prior of shape (L,) (one prompt) or (N, L) (one per query)."""
    return scores.log_softmax(-1) if prior is None else scores.log_softmax(-1) - prior


def domain_texts(texts: list[str], seed: int, samples: int = DOMAIN_SAMPLES) -> list[str]:
    """Content-free inputs of random words of `texts`, each as many words as a text has on average."""
    words = [word for text in texts for word in text.split()]
    if not words:
        return []
    length = max(1, round(len(words) / len(texts)))
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=length)) for _ in range(samples)]


def best_mode(accuracies: dict[str, float]) -> str:
    """The mode with the highest validation accuracy; a tie goes to the one listed first in MODES
    (none, contextual, domain, batch)."""
    return max((m for m in MODES if m in accuracies), key=lambda m: (accuracies[m], -MODES.index(m)))
