"""Classification with a causal LM: score each label's verbaliser after the prompt.

A label's score is the log-likelihood of its verbaliser tokens after the shared prefix (the
instruction and any in-context demonstrations) and the query. The prefix is the same for every
query, so it runs once: its key/value cache is kept and every query continues from it
(`cached=True`). Each query then runs once for all the labels: its last position scores every
label's first token, and only the later tokens of labels of several tokens run again, on the
query's own cache. `cached=False` scores the full prompt of every (query, label) row, the slow
reference the cached path must agree with.

How the scores are calibrated against a small model's lean toward some labels is eval/calibration.py.
"""

from __future__ import annotations

import copy

import torch

# Rows (query x label) per model call are bounded by the memory of their logits and of the
# prefix cache copied for each row.
LOGITS_BYTES = 256 * 2**20
CACHE_BYTES = 1024 * 2**20
TOKENS_PER_CALL = 8192


@torch.no_grad()
def label_scores(model, queries: list[list[int]], cached: bool = True, progress=None, prefixes: list[list[int]] | None = None) -> torch.Tensor:
    """(N, L) log-likelihood of each label's verbaliser after a prefix and each query.

    The prefix is model.prefix_ids() for every query, or `prefixes[i]` for query i (demonstrations
    chosen per query, icl.select=similar): queries with the same prefix share its cache, so a
    prefix of its own is computed once for all the labels of its query.
    """
    answers = model.prompt.answer_ids(model.tokenizer)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, prefix in enumerate(prefixes if prefixes is not None else [model.prefix_ids()] * len(queries)):
        groups.setdefault(tuple(prefix), []).append(i)
    scores = torch.empty(len(queries), len(answers))
    for prefix, members in groups.items():
        scores[members] = _scores_after(model.hf, list(prefix), [queries[i] for i in members], answers, cached, progress)
    return scores


def _scores_after(hf, prefix: list[int], queries: list[list[int]], answers: list[list[int]], cached: bool, progress) -> torch.Tensor:
    """(N, L) label scores of queries that all follow `prefix`."""
    # peft's prompt tuning prepends virtual tokens and ignores position ids: score its rows one
    # at a time (no padding to place) and without a cache.
    prompt_tuned = is_prompt_tuned(hf)
    if cached and not prompt_tuned:
        return _shared_query_scores(hf, prefix, queries, answers, progress)
    # Queries of similar length share a call, so that little of it is padding.
    by_length = sorted(range(len(queries)), key=lambda i: len(queries[i]))
    rows = [(i, label) for i in by_length for label in range(len(answers))]
    longest_answer = max(len(a) for a in answers)
    device = next(hf.parameters()).device
    width = max(len(q) for q in queries) + longest_answer + len(prefix)
    per_call = min(LOGITS_BYTES // ((longest_answer + 1) * _vocab(hf) * 4), TOKENS_PER_CALL // width)
    per_call = 1 if prompt_tuned else max(1, per_call)
    scores = torch.empty(len(queries), len(answers))
    for start in range(0, len(rows), per_call):
        chunk = rows[start : start + per_call]
        sequences = [prefix + queries[i] + answers[label] for i, label in chunk]
        logprobs = _answer_logprobs(hf, sequences, longest_answer + 1, device)
        for r, (i, label) in enumerate(chunk):
            n = len(answers[label])
            # The last n + 1 positions: the one before the answer predicts its first token, and so on.
            steps = logprobs[r, -n - 1 : -1]
            scores[i, label] = steps.gather(-1, torch.tensor(answers[label])[:, None]).sum()
        if progress:
            progress.step(n=len(chunk))
    return scores


def _shared_query_scores(hf, prefix: list[int], queries: list[list[int]], answers: list[list[int]], progress) -> torch.Tensor:
    """(N, L) label scores, each query computed once on the prefix's cache for all of its labels.

    A query's last position predicts the first token of every label. Labels of several tokens then
    run their other tokens (all but the last, whose prediction is not needed) as one more row per
    (query, label) on a copy of that query's cache, right-padded: a real token never attends to
    the padding after it.
    """
    device = next(hf.parameters()).device
    past = hf(input_ids=torch.tensor([prefix], device=device), use_cache=True).past_key_values if prefix else None
    longer = [label for label, a in enumerate(answers) if len(a) > 1]
    tail = max((len(answers[label]) - 1 for label in longer), default=0)
    by_length = sorted(range(len(queries)), key=lambda i: len(queries[i]))
    width = len(prefix) + max(len(q) for q in queries) + tail
    cache_per_query = cache_bytes(past) / max(len(prefix), 1) * width * (1 + len(longer))
    per_call = min(
        TOKENS_PER_CALL // width,
        int(CACHE_BYTES // max(cache_per_query, 1)),
        LOGITS_BYTES // (max(tail * len(longer), 1) * _vocab(hf) * 4),
    )
    per_call = max(1, per_call)
    first_ids = torch.tensor([a[0] for a in answers])
    scores = torch.empty(len(queries), len(answers))
    for start in range(0, len(by_length), per_call):
        chunk = by_length[start : start + per_call]
        ids, mask, positions, cache = after_prefix(past, len(prefix), [queries[i] for i in chunk], device)
        out = hf(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=bool(longer),
                 logits_to_keep=1)  # fmt: skip
        scores[chunk] = out.logits[:, -1].float().log_softmax(-1).cpu()[:, first_ids]
        if longer:
            rows = [(r, label) for r in range(len(chunk)) for label in longer]
            _add_later_tokens(hf, out.past_key_values, rows, answers, mask, positions[:, -1], scores, chunk, device)
        if progress:
            progress.step(n=len(chunk) * len(answers))
    return scores


def _add_later_tokens(hf, cache, rows, answers, mask, last_position, scores, chunk, device) -> None:
    """Add to `scores` the log-likelihood of every answer token after the first, for (query row, label) `rows`."""
    which = torch.tensor([r for r, _ in rows], device=device)
    cache.batch_select_indices(which)
    tails = [answers[label][:-1] for _, label in rows]
    width = max(len(t) for t in tails)
    ids = torch.tensor([t + [0] * (width - len(t)) for t in tails], device=device)
    tail_mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in tails], device=device)
    positions = last_position[which, None] + 1 + torch.arange(width, device=device)
    out = hf(input_ids=ids, attention_mask=torch.cat([mask[which], tail_mask], dim=1), position_ids=positions,
             past_key_values=cache, use_cache=True)  # fmt: skip
    logprobs = out.logits.float().log_softmax(-1).cpu()
    for k, (r, label) in enumerate(rows):
        later = torch.tensor(answers[label][1:])
        scores[chunk[r], label] += logprobs[k, : len(later)].gather(-1, later[:, None]).sum()


def left_padded(sequences: list[list[int]], offset: int, device):
    """Ids, mask and position ids of left-padded sequences that start at position `offset`.

    Explicit position ids keep every real token where it would be unpadded, so padding changes
    nothing but the batch shape.
    """
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[0] * (width - len(s)) + s for s in sequences], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0) + offset


def after_prefix(past, offset: int, sequences: list[list[int]], device):
    """Ids, mask, position ids and cache for left-padded `sequences` that continue the `offset`
    tokens cached in `past` (None: they start at position 0): the cache is a copy, one row per
    sequence, and the mask covers the prefix too."""
    ids, mask, positions = left_padded(sequences, offset, device)
    if past is None:
        return ids, mask, positions, None
    cache = copy.deepcopy(past)
    cache.batch_repeat_interleave(len(sequences))
    mask = torch.cat([torch.ones(len(sequences), offset, dtype=mask.dtype, device=device), mask], dim=1)
    return ids, mask, positions, cache


def _answer_logprobs(hf, sequences: list[list[int]], keep: int, device) -> torch.Tensor:
    """Log-probabilities at the last `keep` positions of each sequence, (R, keep, V); the sequences
    are left-padded so that they all end together."""
    ids, mask, positions = left_padded(sequences, 0, device)
    out = hf(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep)
    return out.logits[:, -keep:].float().log_softmax(-1).cpu()


def is_prompt_tuned(hf) -> bool:
    """A peft prompt-learning model: it prepends virtual tokens and ignores position ids and caches."""
    return getattr(getattr(hf, "active_peft_config", None), "is_prompt_learning", False)


def _vocab(hf) -> int:
    return hf.get_output_embeddings().weight.shape[0]


def cache_bytes(past) -> int:
    total = 0
    for layer in getattr(past, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total
