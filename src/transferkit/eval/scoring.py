"""Classification with a causal LM: score each label's verbaliser after the prompt.

A label's score is the log-likelihood of its verbaliser tokens after the shared prefix (the
instruction and any in-context demonstrations) and the query. The prefix is the same for every
query, so it runs once: its key/value cache is kept and every query continues from it, and only
the query and label tokens are computed (`cached=True`). `cached=False` scores the full prompt
each time, the slow reference the cached path must agree with.

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
    # Queries of similar length share a call, so that little of it is padding.
    by_length = sorted(range(len(queries)), key=lambda i: len(queries[i]))
    rows = [(i, label) for i in by_length for label in range(len(answers))]
    longest_answer = max(len(a) for a in answers)
    device = next(hf.parameters()).device
    # peft's prompt tuning prepends virtual tokens and ignores position ids: score its rows one
    # at a time (no padding to place) and without a cache.
    prompt_tuned = getattr(getattr(hf, "active_peft_config", None), "is_prompt_learning", False)
    cached = cached and not prompt_tuned and len(prefix) > 0
    past = hf(input_ids=torch.tensor([prefix], device=device), use_cache=True).past_key_values if cached else None

    width = max(len(q) for q in queries) + longest_answer + (0 if cached else len(prefix))
    per_call = min(
        LOGITS_BYTES // ((longest_answer + 1) * _vocab(hf) * 4),
        CACHE_BYTES // max(_cache_bytes(past), 1) if cached else len(rows),
        TOKENS_PER_CALL // width,
    )
    per_call = 1 if prompt_tuned else max(1, per_call)
    scores = torch.empty(len(queries), len(answers))
    for start in range(0, len(rows), per_call):
        chunk = rows[start : start + per_call]
        sequences = [([] if cached else prefix) + queries[i] + answers[label] for i, label in chunk]
        logprobs = _answer_logprobs(hf, sequences, longest_answer + 1, past, len(prefix) if cached else 0, device)
        for r, (i, label) in enumerate(chunk):
            n = len(answers[label])
            # The last n + 1 positions: the one before the answer predicts its first token, and so on.
            steps = logprobs[r, -n - 1 : -1]
            scores[i, label] = steps.gather(-1, torch.tensor(answers[label])[:, None]).sum()
        if progress:
            progress.step(n=len(chunk))
    return scores


def _answer_logprobs(hf, sequences: list[list[int]], keep: int, past, past_length: int, device) -> torch.Tensor:
    """Log-probabilities at the last `keep` positions of each sequence, (R, keep, V).

    Sequences are left-padded so that they all end together; explicit position ids keep every real
    token where it would be unpadded, so padding changes nothing but the batch shape.
    """
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[0] * (width - len(s)) + s for s in sequences], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0) + past_length
    if past is not None:
        past = copy.deepcopy(past)
        past.batch_repeat_interleave(len(sequences))
        mask = torch.cat([torch.ones(len(sequences), past_length, dtype=mask.dtype, device=device), mask], dim=1)
    out = hf(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=past is not None,
             logits_to_keep=keep)  # fmt: skip
    return out.logits[:, -keep:].float().log_softmax(-1).cpu()


def _vocab(hf) -> int:
    return hf.get_output_embeddings().weight.shape[0]


def _cache_bytes(past) -> int:
    total = 0
    for layer in getattr(past, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total
