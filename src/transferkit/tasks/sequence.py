"""What every task with a sequence-level head shares: one output vector per input, computed by the
model's `forward` (or its head on cached features), evaluated batch by batch."""

from __future__ import annotations

import torch

from ..data.batching import make_loader
from ..training.loop import evaluate


def eval_loader(items, pad_id: int, batch_size: int = 64):
    # Larger than training batches: evaluation keeps no activations for a backward pass.
    return make_loader(items, batch_size, shuffle=False, seed=0, pad_id=pad_id)


def test_on_items(task, model, items, ctx) -> tuple[dict, dict]:
    """Loss and the task's metrics over `items`, in fp32 (as a plain load of the saved folder computes)."""
    return evaluate(model, eval_loader(items, model.pad_id), task, ctx.accelerator, "fp32"), {}


class _Indexed(torch.utils.data.Dataset):
    """Items with their position, so that outputs come back in input order whatever the batching."""

    def __init__(self, items):
        self.items = items
        self.lengths = getattr(items, "lengths", None) or [len(item.get("input_ids", ())) or 1 for item in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {**self.items[i], "index": i}


@torch.no_grad()
def outputs(model, items, batch_size: int = 32) -> torch.Tensor:
    """The model's outputs (N, num_outputs) for `items`, in input order, in fp32."""
    indexed = _Indexed(items)
    model.eval()
    device = next(model.parameters()).device
    result = None
    for batch in make_loader(indexed, batch_size, shuffle=False, seed=0, pad_id=model.pad_id):
        index = batch.pop("index")
        batch.pop("labels", None)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).float().cpu()
        if result is None:
            result = torch.empty(len(indexed), *logits.shape[1:])
        result[index] = logits
    return result if result is not None else torch.empty(0)
