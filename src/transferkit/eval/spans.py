"""Extractive question answering: choosing an answer span from start / end logits over a question's
windows, and scoring it by exact match and token F1 as the official SQuAD evaluation does.

The normalisation is the SQuAD script's (lower case, punctuation and the articles a / an / the removed,
whitespace collapsed); a question's score is the best over its gold answers; an unanswerable question
(SQuAD 2.0) has the empty answer as its gold, which scores 1 only against an empty prediction.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import torch

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not true:  # an empty answer on either side (SQuAD 2.0): right only if both are
        return float(predicted == true)
    common = sum((Counter(predicted) & Counter(true)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(true)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(prediction: str, golds: list[str]) -> tuple[float, float]:
    """(exact match, F1) of `prediction` against the best-matching gold answer ([""]: unanswerable)."""
    golds = golds or [""]
    return max(exact_match(prediction, g) for g in golds), max(token_f1(prediction, g) for g in golds)


def window_candidates(logits: torch.Tensor, context: torch.Tensor, n_best: int, max_answer_tokens: int) -> list[tuple[float, int, int]]:
    """(score, start token, end token) of the best spans of one window, highest first.

    `logits` (T, 2) are the start and end logits; `context` (T,) marks the tokens that are context
    (only they may start or end an answer). The score is the start logit plus the end logit; the
    `n_best` highest starts and ends are paired, keeping spans that run forward and hold at most
    `max_answer_tokens` tokens.
    """
    start, end = logits[:, 0].masked_fill(~context, float("-inf")), logits[:, 1].masked_fill(~context, float("-inf"))
    k = min(n_best, int(context.sum()))
    if k == 0:
        return []
    starts, ends = start.topk(k).indices.tolist(), end.topk(k).indices.tolist()
    candidates = [(float(start[s] + end[e]), s, e) for s in starts for e in ends if s <= e < s + max_answer_tokens]
    return sorted(candidates, reverse=True)[:n_best]
