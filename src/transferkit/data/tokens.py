"""Token ids computed once per (data, tokenizer, max_length) and cached on disk by fingerprint.

The whole table is tokenized, not a split of it, so every seed, training-set size and regime of a
comparison on the same file reads the same cache. The key is the table's content hash, the column, the
tokenizer's own definition (vocabulary, normaliser, special tokens) and the truncation length: change any
of them and the tokens are computed anew.
"""

from __future__ import annotations

import hashlib
import json

import torch

from .examples import Examples, TextSource
from .tables import quiet_datasets

FORMAT = 1  # bump when what is stored changes


class TokenItems(torch.utils.data.Dataset):
    """Loader items {"input_ids": [...], "labels": int} over rows of a token table (memory-mapped).

    `lengths` lets the length-grouped sampler batch similar lengths; `__getitems__` reads a whole batch
    from Arrow in one call.
    """

    def __init__(self, tokens, labels: list | None):
        self.tokens, self.labels = tokens, labels
        self.lengths = list(tokens["length"])

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        ids = self.tokens[indices]["input_ids"]
        if self.labels is None:
            return [{"input_ids": x} for x in ids]
        return [{"input_ids": x, "labels": self.labels[i]} for x, i in zip(ids, indices)]


def token_items(examples: Examples, tokenizer, max_length: int, labels: list | None, note=lambda message: None) -> TokenItems | list[dict]:
    """Token ids of `examples` (cached when they come from a table) with `labels` (indices), in order."""
    if examples.source is None:
        ids = tokenizer(list(examples.inputs), truncation=True, max_length=max_length)["input_ids"]
        return [{"input_ids": x} | ({} if labels is None else {"labels": y}) for x, y in zip(ids, labels or [None] * len(ids))]
    tokens = cached_tokens(examples.source, tokenizer, max_length, note)
    if examples.indices is not None:
        tokens = tokens.select(examples.indices)
    return TokenItems(tokens, labels)


def cached_tokens(source: TextSource, tokenizer, max_length: int, note=lambda message: None):
    """A Dataset with input_ids and length for every row of `source`, from the cache when it is there."""
    from ..models.causal import cache_dir

    quiet_datasets()
    key = hashlib.sha256(json.dumps([FORMAT, source.fingerprint, tokenizer_fingerprint(tokenizer), max_length]).encode()).hexdigest()
    path = cache_dir() / "tokens" / f"{key[:32]}.arrow"
    path.parent.mkdir(parents=True, exist_ok=True)
    hit = path.is_file()
    rows = source.rows.select_columns([source.column])

    def tokenize(batch: dict) -> dict:
        ids = tokenizer(batch[source.column], truncation=True, max_length=max_length)["input_ids"]
        return {"input_ids": ids, "length": [len(x) for x in ids]}

    if key in _OPENED:  # the validation and test splits of a table already read for training
        return _OPENED[key]
    tokens = rows.map(tokenize, batched=True, batch_size=1000, remove_columns=[source.column],
                      cache_file_name=str(path), new_fingerprint=key[:32], load_from_cache_file=True)  # fmt: skip
    note(f"tokens of {len(rows):,} texts {'read from the cache' if hit else 'computed and cached'} ({path.parent})")
    _OPENED[key] = tokens
    return tokens


_OPENED: dict[str, object] = {}  # key -> token Dataset (memory-mapped), within this process


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides a tokenizer's ids: its class, vocabulary and rules, and its special tokens."""
    parts = [type(tokenizer).__name__, sorted(tokenizer.special_tokens_map.items(), key=str)]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)  # set per call; max_length is part of the key anyway
        definition.pop("padding", None)
        parts.append(definition)
    else:
        parts.append(sorted(tokenizer.get_vocab().items()))
        parts.append({k: v for k, v in sorted(tokenizer.init_kwargs.items()) if isinstance(v, (str, int, float, bool, type(None)))})
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
