"""What every task with a sequence-level head shares: one output vector per input, computed by the
model's `forward` (or its head on cached features), evaluated batch by batch."""

from __future__ import annotations

import torch

from ..data.batching import lengths_of, make_loader
from ..training.loop import evaluate


EVAL_ROWS = 64  # larger than training batches: evaluation keeps no activations for a backward pass
LOGITS_BYTES = 2**30  # what one evaluation batch's outputs may take (logits, their fp32 copy, log-softmax)


def eval_loader(items, model, batch_size: int | None = None):
    """Batches for evaluation: EVAL_ROWS inputs, fewer where the model's outputs per token (a causal
    LM's vocabulary) would take more than LOGITS_BYTES at the longest input (64 x 1,024 tokens x 49k
    logits would be 13 GB)."""
    if batch_size is None:
        batch_size = EVAL_ROWS
        if model.outputs_per_token:
            row = max(lengths_of(items), default=1) * model.outputs_per_token * 12
            batch_size = max(1, min(EVAL_ROWS, LOGITS_BYTES // max(row, 1)))
    return make_loader(items, batch_size, shuffle=False, seed=0, pad_id=model.pad_id)


def test_on_items(task, model, items, ctx) -> tuple[dict, dict]:
    """Loss and the task's metrics over `items`, in fp32 (as a plain load of the saved folder computes)."""
    return evaluate(model, eval_loader(items, model), task, ctx.accelerator, "fp32"), {}


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
