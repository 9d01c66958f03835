"""Turn examples into batches: token ids once up front, dynamic padding, length-grouped order."""

from __future__ import annotations

import random

import torch
from torch.utils.data import DataLoader, Sampler


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of examples of similar length, so that padding wastes little compute.

    Shuffles, cuts the order into chunks of 50 batches, sorts each chunk by length, then
    shuffles the batches. A new, seeded order every epoch; the same seed gives the same orders.
    An epoch's order depends on nothing but (seed, epoch), so a resumed run can pick up in the
    middle of one: `set_epoch(e)` (as accelerate calls it, and torch's DistributedSampler takes it)
    and `skip` (batches of the next epoch to leave out, once).
    """

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0, on_epoch=None):
        self.lengths, self.batch_size, self.shuffle, self.seed = lengths, batch_size, shuffle, seed
        self.epoch, self.skip = 0, 0
        self.on_epoch = on_epoch  # told each epoch's number as it starts (items that augment at random)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = list(range(len(self.lengths)))
        if self.on_epoch:
            self.on_epoch(self.epoch)
        if self.shuffle:
            rng = random.Random(self.seed + self.epoch)
            self.epoch += 1
            rng.shuffle(order)
        chunk = self.batch_size * 50
        grouped = []
        for start in range(0, len(order), chunk):
            grouped += sorted(order[start : start + chunk], key=lambda i: -self.lengths[i])
        batches = [grouped[i : i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        skip, self.skip = self.skip, 0
        yield from batches[skip:]

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


def collate(pad_id: int):
    """Stack one batch: token-id lists are padded to the longest and get an attention mask;
    per-token label lists are padded with -100."""

    def collate_fn(items: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if key == "input_ids":
                longest = max(len(v) for v in values)
                batch["input_ids"] = torch.tensor([v + [pad_id] * (longest - len(v)) for v in values])
                batch["attention_mask"] = torch.tensor([[1] * len(v) + [0] * (longest - len(v)) for v in values])
            elif key == "token_type_ids":  # a pair's segment ids: padding belongs to no segment
                longest = max(len(v) for v in values)
                batch[key] = torch.tensor([v + [0] * (longest - len(v)) for v in values])
            elif key == "labels" and isinstance(values[0], list):  # per-token targets; -100 is ignored
                longest = max(len(v) for v in values)
                batch["labels"] = torch.tensor([v + [-100] * (longest - len(v)) for v in values])
            elif isinstance(values[0], torch.Tensor) and values[0].ndim and len({v.shape for v in values}) > 1:
                # cached per-token features (T, C) of inputs of different lengths: zero-padded to the longest
                batch[key] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True)
            elif isinstance(values[0], torch.Tensor):
                batch[key] = torch.stack(values)
            else:
                batch[key] = torch.tensor(values)
        return batch

    return collate_fn


def lengths_of(items) -> list[int]:
    """Tokens of each item (the items' own `lengths` where they carry them); 1 for items without token ids."""
    return getattr(items, "lengths", None) or [len(item["input_ids"]) if "input_ids" in item else 1 for item in items]


def make_loader(items, batch_size: int, shuffle: bool, seed: int, pad_id: int = 0) -> DataLoader:
    """A DataLoader over a sequence of dict items; length-grouped when the items carry token ids.

    `items` may compute its items on access (random image augmentation): then it has no
    `lengths` to group by, and every item counts as the same length.
    """
    lengths = lengths_of(items)
    sampler = LengthGroupedBatches(lengths, batch_size, shuffle, seed, on_epoch=getattr(items, "set_epoch", None))
    # A generator of its own: otherwise each epoch's start draws a worker seed from the global RNG,
    # which dropout also draws from, and a run resumed mid-epoch would see other dropout masks.
    return DataLoader(items, batch_sampler=sampler, collate_fn=collate(pad_id), generator=torch.Generator().manual_seed(seed))
