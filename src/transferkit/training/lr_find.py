"""The learning-rate range test (Smith 2017, as fastai's and Lightning's LR finders run it).

A short run whose rate rises exponentially from `start` to `end`, one optimizer step per rate, the
loss recorded at each. The run stops once a running mean of the loss passes four times its lowest, or
the loss is no longer finite. The suggestion is read afterwards, from a centred average of the losses
(each the mean of the steps within `HALF_WINDOW` of it): the rate where that curve falls fastest,
before its minimum. The running mean that stops the test trails the rates by about 1/SMOOTHING steps
(a decade and more of learning rate over 100 steps), which puts its minimum and its steepest stretch
past the point where the loss itself turns; the centred curve has no such lag. The weights are put
back as they were found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .loop import Progress, _accumulate, _groups, restore, snapshot
from .optim import param_groups

START, END, STEPS = 1e-7, 1.0, 100
SMOOTHING = 0.05  # the weight of each new loss in the running mean that watches for divergence
DIVERGED = 4.0  # stop once the running mean passes this times its minimum
HALF_WINDOW = 5  # the suggestion's centred average spans this many steps either side (0.7 decade of 100 steps)


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    """The centred average of the losses that the suggestion is read from."""
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
    result, running, lowest = RangeTest(), 0.0, math.inf
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
                mean = running / (1 - (1 - SMOOTHING) ** (len(result.lrs) + 1))
                lowest = min(lowest, mean)
                result.lrs.append(lr)
                result.losses.append(loss)
                progress.step(loss=loss)
                if mean > DIVERGED * lowest:
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
    result.smoothed = centred(result.losses)
    result.suggested = suggest(result.lrs, result.losses)
    return result


def centred(losses: list[float], half: int = HALF_WINDOW) -> list[float]:
    """Each loss replaced by the mean of those within `half` steps of it (fewer at the ends)."""
    return [sum(window) / len(window) for window in (losses[max(0, i - half) : i + half + 1] for i in range(len(losses)))]


def suggest(lrs: list[float], losses: list[float]) -> float | None:
    """The rate where the centred average of the losses falls fastest (against log lr), before its
    minimum; None when the curve is too short to say or never falls."""
    if len(lrs) < 5:
        return None
    curve = centred(losses)
    lowest = min(range(len(curve)), key=curve.__getitem__)
    slopes = [(curve[i] - curve[i - 1]) / (math.log(lrs[i]) - math.log(lrs[i - 1])) for i in range(1, lowest + 1)]
    if not slopes or min(slopes) >= 0:
        return None
    return lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)]
