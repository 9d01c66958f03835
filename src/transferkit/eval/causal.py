"""Label scores of a causal LM: each label's verbaliser scored after the prompt and each text,
optionally calibrated (the scoring itself, with the cached prefix, is eval/scoring.py)."""

from __future__ import annotations

import torch

from ..training.loop import Progress
from .scoring import calibrated, label_scores


def verbaliser_scores(model, texts: list[str], progress: Progress | None = None) -> torch.Tensor:
    """(N, L) log-likelihood of each label's verbaliser after the prompt and each text."""
    progress = progress or Progress()
    queries = [model.prompt.query_ids(model.tokenizer, t, model.max_length) for t in texts]
    progress.start("scoring labels", len(queries) * len(model.label_names))
    scores = label_scores(model, queries, progress=progress)
    progress.close()
    return scores


def label_probabilities(model, texts: list[str], content_free: str | None = None, progress: Progress | None = None) -> torch.Tensor:
    """(N, L) probability of each label; calibrated against `content_free` when one is given."""
    scores = verbaliser_scores(model, texts, progress)
    if content_free is not None:
        scores = calibrated(scores, verbaliser_scores(model, [content_free]))
    return scores.softmax(-1)
