"""Label scores of a causal LM: each label's verbaliser scored after the prompt and each text, and
after content-free inputs under the same prompt (the scoring itself, with the cached prefix, is
eval/scoring.py; what calibration does with the scores, eval/calibration.py)."""

from __future__ import annotations

import torch

from ..training.loop import Progress
from .scoring import label_scores


def verbaliser_scores(model, texts: list[str], progress: Progress | None = None, prefixes: list[list[int]] | None = None,
                      free_texts: list[str] = ()) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(N, L) log-likelihood of each label's verbaliser after the prompt and each text, and the same
    for each of M `free_texts` under the shared prompt, (M, L), or under each text's own prompt
    (`prefixes`, one per text), (N, M, L): there they share the text's prefix cache."""
    progress = progress or Progress()
    queries = [model.prompt.query_ids(model.tokenizer, t, model.max_length) for t in texts]
    free = [model.prompt.query_ids(model.tokenizer, t, model.max_length) for t in free_texts]
    n, m, labels = len(queries), len(free), len(model.label_names)
    if prefixes is None:
        everything, their_prefixes = queries + free, None
    else:
        everything = queries + [f for _ in queries for f in free]
        their_prefixes = list(prefixes) + [p for p in prefixes for _ in free]
    progress.start("scoring labels", len(everything) * labels)
    scores = label_scores(model, everything, progress=progress, prefixes=their_prefixes)
    progress.close()
    rest = scores[n:] if prefixes is None else scores[n:].view(n, m, labels)
    return scores[:n], rest
