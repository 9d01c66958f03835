"""Greedy generation from a causal LM, and exact match against reference answers."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch
from transformers.cache_utils import DynamicLayer

from .scoring import after_prefix, cache_bytes, is_prompt_tuned, left_padded


# Rows per batch are bounded by the key/value cache they hold and by the tokens of their first call.
CACHE_BYTES = 1024 * 2**20
TOKENS_PER_CALL = 8192
MAX_ROWS = 64

# Generation settings under which greedy decoding is no longer the plain argmax of the logits
# (with their neutral values): a model whose generation_config sets one is decoded by `generate`.
_NOT_PLAIN_ARGMAX = {
    "num_beams": 1, "penalty_alpha": None, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0, "bad_words_ids": None, "sequence_bias": None, "min_length": 0, "min_new_tokens": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "exponential_decay_length_penalty": None, "stop_strings": None,
}  # fmt: skip


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, progress=None) -> list[str]:
    """Greedy continuations of prompt token ids, decoded without special tokens, in input order.

    What every prompt begins with (the chat template's system turn, any demonstrations) runs once
    and its key/value cache is shared; the rest go in batches of similar length, and a row leaves
    its batch as soon as it says its end-of-sequence token.
    """
    if not prompts:
        return []
    hf, eos = model.hf, model.tokenizer.eos_token_id
    was_training = hf.training
    hf.eval()
    try:
        if _plain_argmax(hf):
            answers = _greedy(hf, prompts, max_new_tokens, eos, progress)
        else:
            answers = _hf_generate(hf, prompts, max_new_tokens, model.pad_id, eos, progress)
    finally:
        hf.train(was_training)
    return [t.strip() for t in model.tokenizer.batch_decode(answers, skip_special_tokens=True)]


def _plain_argmax(hf) -> bool:
    config = getattr(hf, "generation_config", None)
    if is_prompt_tuned(hf) or config is None:
        return False
    return all(getattr(config, key, neutral) in (neutral, None) for key, neutral in _NOT_PLAIN_ARGMAX.items())


def _greedy(hf, prompts: list[list[int]], max_new_tokens: int, eos: int | None, progress) -> list[list[int]]:
    device = next(hf.parameters()).device
    shared = _common_prefix(prompts) if len(prompts) > 1 else []  # one prompt alone: nothing to share
    past = hf(input_ids=torch.tensor([shared], device=device), use_cache=True).past_key_values if shared else None
    rests = [p[len(shared) :] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(rests[i]))
    longest = len(rests[order[-1]])
    per_row = _cache_bytes_per_token(hf, past, len(shared)) * (len(shared) + longest + max_new_tokens)
    rows = max(1, min(MAX_ROWS, TOKENS_PER_CALL // max(longest, 1), int(CACHE_BYTES // per_row)))
    answers: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), rows):
        batch = order[start : start + rows]
        for i, tokens in zip(batch, _greedy_batch(hf, past, len(shared), [rests[i] for i in batch], max_new_tokens, eos, device)):
            answers[i] = tokens
        if progress:
            progress.step(n=len(batch))
    return answers


def _greedy_batch(hf, past, offset: int, rests: list[list[int]], max_new_tokens: int, eos: int | None, device) -> list[list[int]]:
    """Greedy tokens after each of `rests` (shortest first), which all follow the `offset` tokens cached in `past`."""
    out, cache, mask, position = _prefill(hf, past, offset, rests, device)
    rows = torch.arange(len(rests), device=device)  # which of `rests` each batch row still is
    generated: list[list[int]] = [[] for _ in rests]
    for step in range(max_new_tokens):
        token = out.logits[:, -1].float().argmax(-1)
        for row, t in zip(rows.tolist(), token.tolist()):
            generated[row].append(t)
        going = token != eos if eos is not None else torch.ones_like(token, dtype=torch.bool)
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():  # finished rows leave the batch, and their cache with them
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, token, mask, position = rows[keep], token[keep], mask[keep], position[keep]
        position = position + 1
        mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype, device=device)], dim=1)
        out = hf(input_ids=token[:, None], attention_mask=_unless_all_ones(mask), position_ids=position[:, None], past_key_values=cache,
                 use_cache=True)  # fmt: skip
    return generated


def _prefill(hf, past, offset: int, rests: list[list[int]], device):
    """The output, the cache, the attention mask and the last position of `rests` (shortest first)
    after `past`.

    Rests of similar length run together, so that little of a call is padding; their caches are
    then joined into one batch, padded between the shared prefix and each row's own tokens. Only a
    plain key/value cache can be joined so: any other (sliding windows, ...) runs in one call.
    """
    groups, start = [], 0
    for end in range(1, len(rests) + 1):
        if end == len(rests) or len(rests[end]) > len(rests[start]) * 1.1 + 4:
            groups.append(rests[start:end])
            start = end
    runs = [_prefill_call(hf, past, offset, groups[0], device)]
    if len(groups) > 1 and not _joinable(runs[0][1]):
        return _prefill_call(hf, past, offset, rests, device)
    runs += [_prefill_call(hf, past, offset, group, device) for group in groups[1:]]
    return runs[0] if len(runs) == 1 else _joined(runs, offset, device)


def _prefill_call(hf, past, offset: int, rests: list[list[int]], device):
    ids, mask, positions, cache = after_prefix(past, offset, rests, device)
    out = hf(input_ids=ids, attention_mask=_unless_all_ones(mask), position_ids=positions, past_key_values=cache, use_cache=True,
             logits_to_keep=1)  # fmt: skip
    return out, out.past_key_values, mask, positions[:, -1]


def _joinable(cache) -> bool:
    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


def _joined(runs, offset: int, device):
    """One batch of several prefill calls' rows: each call's keys, values and mask padded to the
    widest after the first `offset` (shared) positions."""
    width = max(mask.shape[1] for _, _, mask, _ in runs)
    cache = runs[0][1]
    for i, layer in enumerate(cache.layers):
        for name in ("keys", "values"):
            parts = []
            for _, other, _, _ in runs:
                tensor = getattr(other.layers[i], name)  # (B, heads, T, head dim)
                gap = tensor.new_zeros(*tensor.shape[:2], width - tensor.shape[2], tensor.shape[3])
                parts.append(torch.cat([tensor[:, :, :offset], gap, tensor[:, :, offset:]], dim=2))
            setattr(layer, name, torch.cat(parts))
    masks = [torch.cat([m[:, :offset], m.new_zeros(len(m), width - m.shape[1]), m[:, offset:]], dim=1) for _, _, m, _ in runs]
    logits = torch.cat([out.logits[:, -1:] for out, _, _, _ in runs])
    return SimpleNamespace(logits=logits), cache, torch.cat(masks), torch.cat([p for _, _, _, p in runs])


def _unless_all_ones(mask: torch.Tensor) -> torch.Tensor | None:
    """No mask where nothing is padding (every row's whole width is real): attention then runs the
    plain causal kernel."""
    return None if bool(mask.all()) else mask


def _hf_generate(hf, prompts: list[list[int]], max_new_tokens: int, pad: int, eos: int | None, progress, batch_size: int = 8) -> list[list[int]]:
    """transformers' own generate, for models whose generation settings change greedy decoding
    (a repetition penalty, beams, ...) and for prompt tuning."""
    device = next(hf.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask, _ = left_padded([prompts[i] for i in batch], 0, device)  # every prompt ends where generation starts
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                          pad_token_id=pad, eos_token_id=eos)  # fmt: skip
        for i, row in zip(batch, out[:, ids.shape[1] :].tolist()):
            answers[i] = row
        if progress:
            progress.step(n=len(batch))
    return answers


def _common_prefix(prompts: list[list[int]]) -> list[int]:
    """The tokens every prompt starts with, leaving each at least one of its own (whose logits start
    its answer)."""
    shortest = min(len(p) for p in prompts) - 1
    n = 0
    while n < shortest and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return prompts[0][:n]


def _cache_bytes_per_token(hf, past, length: int) -> float:
    if past is not None and length:
        return cache_bytes(past) / length
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * 4


def normalise(text: str) -> str:
    """Case, surrounding space and punctuation, and runs of white space do not count."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .!?\"'")


def exact_match(predictions: list[str], references: list[str]) -> float:
    return sum(normalise(p) == normalise(r) for p, r in zip(predictions, references)) / max(len(references), 1)
