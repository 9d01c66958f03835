"""The learning-rate range test (Smith 2017, as fastai's and Lightning's LR finders run it).

A short run whose rate rises exponentially from `start` to `end`, one optimizer step per rate, the
loss recorded at each. The run stops once the smoothed loss passes four times its lowest, or is no
longer finite. The suggested rate is where the smoothed loss falls fastest (the steepest negative
slope against log lr), taken only from the stretch before its minimum and capped at a tenth of the
rate at the minimum: past that, training is already near divergence. The weights are put back as
they were found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .loop import Progress, _accumulate, _groups, restore, snapshot
from .optim import param_groups

START, END, STEPS = 1e-7, 1.0, 100
SMOOTHING = 0.05  # the weight of each new loss in the running mean (fastai's 0.98 momentum)
DIVERGED = 4.0  # stop once the smoothed loss passes this times its minimum


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggested: float | None = None
    stopped: str = "end"
    """end (the whole range ran), diverged (the loss took off), or no-data."""

    def to_dict(self) -> dict:
        return {"lrs": self.lrs, "losses": self.losses, "smoothed": self.smoothed, "suggested": self.suggested, "stopped": self.stopped}


def range_test(model: nn.Module, train_loader, task, accelerator, stage, cfg, precision: str, start: float = START, end: float = END,
               steps: int = STEPS, progress: Progress | None = None) -> RangeTest:  # fmt: skip
    """Run the range test on the parameters of `model` that require grad, batches as `stage` says
    (micro-batches from `train_loader` accumulated to stage.batch_size); the weights are restored."""
    progress = progress or Progress()
    accumulation = stage.batch_size // (cfg.micro_batch_size or stage.batch_size)
    incoming = snapshot(model)
    optimizer = torch.optim.AdamW(param_groups(model, 1.0, cfg.weight_decay, stage.layer_decay), lr=1.0)
    base = [group["lr"] for group in optimizer.param_groups]  # layer-wise scales, relative to the head's 1.0
    prepared, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    trainable = [p for p in prepared.parameters() if p.requires_grad]
    result, running = RangeTest(), 0.0
    ratio = (end / start) ** (1 / max(steps - 1, 1))
    progress.start("lr range test", steps)
    try:
        prepared.train()
        while len(result.lrs) < steps:
            before = len(result.lrs)
            for group in _groups(train_loader, accumulation):
                lr = start * ratio ** len(result.lrs)
                for g, scale in zip(optimizer.param_groups, base):
                    g["lr"] = lr * scale
                loss, _ = _accumulate(prepared, group, task, accelerator, precision)
                if not math.isfinite(loss):
                    result.stopped = "diverged"
                    break
                if cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                running = (1 - SMOOTHING) * running + SMOOTHING * loss
                # The running mean starts at 0 and is biased toward it for its first steps; divide that out.
                smoothed = running / (1 - (1 - SMOOTHING) ** (len(result.lrs) + 1))
                result.lrs.append(lr)
                result.losses.append(loss)
                result.smoothed.append(smoothed)
                progress.step(loss=loss)
                if smoothed > DIVERGED * min(result.smoothed):
                    result.stopped = "diverged"
                    break
                if len(result.lrs) >= steps:
                    break
            if result.stopped == "diverged" or len(result.lrs) == before:
                result.stopped = result.stopped if result.lrs else "no-data"
                break
    finally:
        progress.close()
        restore(model, incoming)
        optimizer.zero_grad(set_to_none=True)
    result.suggested = suggest(result.lrs, result.smoothed)
    return result


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The rate of steepest descent of the smoothed loss before its minimum, at most a tenth of the
    rate at the minimum; None when the curve is too short to say."""
    if len(lrs) < 5:
        return None
    lowest = min(range(len(smoothed)), key=smoothed.__getitem__)
    cap = lrs[lowest] / 10
    # Skip the first tenth: the running mean is still settling there.
    first = max(1, len(lrs) // 10)
    slopes = [(smoothed[i] - smoothed[i - 1]) / (math.log(lrs[i]) - math.log(lrs[i - 1])) for i in range(first, lowest + 1)]
    if not slopes:
        return cap if cap > lrs[0] else None
    steepest = first + min(range(len(slopes)), key=slopes.__getitem__)
    return min(lrs[steepest], cap) if lrs[steepest] > 0 else None
