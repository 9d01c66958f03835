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

FORMAT = 2  # bump when what is stored changes


class RowItems(torch.utils.data.Dataset):
    """Loader items over the rows of a token table (memory-mapped), each with a "length" column.

    `lengths` lets the length-grouped sampler batch similar lengths; `__getitems__` (each kind of item
    has its own) reads a whole batch from Arrow in one call.
    """

    def __init__(self, rows):
        self.rows = rows
        self.lengths = list(rows["length"])
        # A pair's segment ids (0 for the first text, 1 for the second), where the tokenizer makes them.
        self.columns = [c for c in ("input_ids", "token_type_ids") if c in rows.column_names]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        raise NotImplementedError


class TokenItems(RowItems):
    """Loader items {"input_ids": [...], "labels": int}."""

    def __init__(self, tokens, labels: list | None):
        super().__init__(tokens)
        self.labels = labels

    def __getitems__(self, indices: list[int]) -> list[dict]:
        batch = self.rows[indices]
        items = [{c: batch[c][j] for c in self.columns} for j in range(len(indices))]
        if self.labels is not None:
            for item, i in zip(items, indices):
                item["labels"] = self.labels[i]
        return items


def token_items(examples: Examples, tokenizer, max_length: int, labels: list | None, note=lambda message: None) -> TokenItems | list[dict]:
    """Token ids of `examples` (cached when they come from a table) with `labels` (indices), in order."""
    if examples.source is None:
        pairs = None if examples.pairs is None else list(examples.pairs)
        # A pair is truncated longest first: the longer text gives up tokens until both fit.
        encoded = tokenizer(list(examples.inputs), pairs, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "token_type_ids") if k in encoded and (k == "input_ids" or pairs is not None)]
        items = [{k: encoded[k][i] for k in keys} for i in range(len(encoded["input_ids"]))]
        for item, y in zip(items, labels or []):
            item["labels"] = y
        return items
    tokens = cached_tokens(examples.source, tokenizer, max_length, note)
    if examples.indices is not None:
        tokens = tokens.select(examples.indices)
    return TokenItems(tokens, labels)


def cached_tokens(source: TextSource, tokenizer, max_length: int, note=lambda message: None):
    """A Dataset with input_ids and length for every row of `source`, from the cache when it is there."""
    from ..models.causal import cache_dir

    quiet_datasets()
    key = hashlib.sha256(json.dumps([FORMAT, source.fingerprint, source.column, source.pair_column, tokenizer_fingerprint(tokenizer),
                                     max_length]).encode()).hexdigest()  # fmt: skip
    path = cache_dir() / "tokens" / f"{key[:32]}.arrow"
    path.parent.mkdir(parents=True, exist_ok=True)
    hit = path.is_file()
    columns = [source.column] + ([source.pair_column] if source.pair_column else [])
    rows = source.rows.select_columns(columns)

    def tokenize(batch: dict) -> dict:
        pairs = batch[source.pair_column] if source.pair_column else None
        encoded = tokenizer(batch[source.column], pairs, truncation=True, max_length=max_length)
        out = {"input_ids": encoded["input_ids"], "length": [len(x) for x in encoded["input_ids"]]}
        if pairs is not None and "token_type_ids" in encoded:  # which tokens are the second text's
            out["token_type_ids"] = encoded["token_type_ids"]
        return out

    if key in _OPENED:  # the validation and test splits of a table already read for training
        return _OPENED[key]
    tokens = rows.map(tokenize, batched=True, batch_size=1000, remove_columns=columns,
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


def cached_rows(parts: list, make_rows, schema, note=lambda message: None, what: str = "rows"):
    """A memory-mapped Dataset of the rows `make_rows()` yields (dicts matching the pyarrow `schema`),
    computed once and cached under a key made of `parts` (a content hash, the tokenizer's
    fingerprint, the settings that shape the rows), like the token ids above. Tasks whose items are
    more than one text's tokens (question-answering windows) store theirs here."""
    import os

    import datasets
    import pyarrow as pa

    from ..models.causal import cache_dir

    quiet_datasets()
    key = hashlib.sha256(json.dumps([FORMAT, *parts], default=str).encode()).hexdigest()
    if key in _OPENED:
        return _OPENED[key]
    path = cache_dir() / "tokens" / f"{key[:32]}.arrow"
    path.parent.mkdir(parents=True, exist_ok=True)
    hit = path.is_file()
    if not hit:
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        try:
            with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                chunk = []
                for row in make_rows():
                    chunk.append(row)
                    if len(chunk) == 1000:
                        writer.write_batch(pa.RecordBatch.from_pylist(chunk, schema))
                        chunk = []
                if chunk:
                    writer.write_batch(pa.RecordBatch.from_pylist(chunk, schema))
            os.replace(partial, path)  # whole or not at all: a run stopped half-way leaves no half cache
        finally:
            partial.unlink(missing_ok=True)
    rows = datasets.Dataset.from_file(str(path))
    note(f"{what} {'read from the cache' if hit else 'computed and cached'} ({path.parent})")
    _OPENED[key] = rows
    return rows


def content_hash(*columns) -> str:
    """sha256 of sequences of values (texts, numbers), column by column: what a cache key needs of the data."""
    digest = hashlib.sha256()
    for column in columns:
        for value in column:
            digest.update(str(value).encode("utf-8", "surrogatepass") + b"\0")
        digest.update(b"\1")
    return digest.hexdigest()
