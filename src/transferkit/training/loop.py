"""The one training loop every regime runs through: accumulate, clip, step, schedule, validate,
stop early, restore the best weights."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import nn

from .optim import param_groups, schedule


class Diverged(Exception):
    """The training loss stopped being a finite number."""

    def __init__(self, stage: str, step: int, lr: float):
        super().__init__(f"loss became NaN or infinite at step {step} of stage '{stage}'")
        self.stage, self.step, self.lr = stage, step, lr


@dataclass
class FitResult:
    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
    best_step: int = 0
    best_metrics: dict = field(default_factory=dict)
    stopped_early: bool = False
    solver: str = "adam"
    """What fit the stage: the loop ("adam") or training/probe.py ("lbfgs")."""


class Progress:
    """What the loop reports while it runs. The CLI draws a bar; the default shows nothing."""

    def start(self, name: str, total_steps: int) -> None: ...
    def step(self, n: int = 1, **values) -> None: ...
    def close(self) -> None: ...
    def note(self, message: str) -> None: ...


def autocast(accelerator: Accelerator, precision: str):
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(accelerator.device.type, dtype=torch.bfloat16)


@dataclass
class Hooks:
    """What a run attaches to the loop: where records go, the progress bar, extra validation figures."""

    log: Callable[[dict], None] = lambda record: None
    progress: Progress = field(default_factory=Progress)
    extra_validation: Callable[[nn.Module], dict] | None = None
    """Adds metrics to each validation (the general-text loss of metric loss+general)."""


def fit(model: nn.Module, train_loader: Iterable[dict], val_loader: Iterable[dict], task, accelerator: Accelerator,
        stage, cfg, precision: str, hooks: Hooks | None = None) -> FitResult:  # fmt: skip
    """Train the parameters of `model` that require grad, as `stage` (a methods.Stage) says; `cfg` is a TrainConfig.

    `train_loader` yields micro-batches (cfg.micro_batch_size, else the stage's batch size); as many as
    make up `stage.batch_size` are accumulated into one optimizer step. Validates every epoch (or every
    `cfg.eval_every_steps`), stops after `cfg.patience` validations without improvement, and leaves the
    best validated weights in `model`. Raises Diverged (with the best weights restored) when the loss
    stops being finite.
    """
    hooks = hooks or Hooks()
    progress = hooks.progress
    accumulation = stage.batch_size // (cfg.micro_batch_size or stage.batch_size)
    steps_per_epoch = math.ceil(len(train_loader) / accumulation)
    total_steps = stage.max_steps or stage.epochs * steps_per_epoch
    eval_every = cfg.eval_every_steps or steps_per_epoch

    optimizer = torch.optim.AdamW(param_groups(model, stage.lr, cfg.weight_decay, stage.layer_decay), lr=stage.lr)
    scheduler = schedule(optimizer, total_steps, int(cfg.warmup_ratio * total_steps), cfg.schedule)
    raw_model = model
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # L2-SP: the weights as this stage found them (pre-trained, for a one-stage regime) anchor the penalty.
    anchors = [p.detach().clone() for p in trainable] if cfg.l2sp else []

    def validate() -> dict:
        val = evaluate(model, val_loader, task, accelerator, precision)
        return (val | hooks.extra_validation(model)) if hooks.extra_validation else val

    result = FitResult()
    # Validated before the first step: a stage that only makes things worse hands back the
    # weights it was given (the previous stage's best), not its own least bad ones.
    # Patience counts only after min_steps: early validations (a fresh head, a small validation split)
    # are noisy, and stopping on them stops a run before it learns.
    min_steps = cfg.min_steps if cfg.min_steps is not None else total_steps // 3
    best = _Best(raw_model, cfg.metric or task.metric, cfg.patience, validate(), min_steps)
    progress.start(stage.name, total_steps)
    started = time.perf_counter()
    try:
        while result.steps < total_steps and not result.stopped_early:
            model.train()
            for group in _groups(train_loader, accumulation):
                loss, count = _accumulate(model, group, task, accelerator, precision)
                if not math.isfinite(loss):
                    raise Diverged(stage.name, result.steps + 1, stage.lr)
                for p, anchor in zip(trainable, anchors):
                    if p.grad is not None:  # the gradient of (l2sp / 2) * ||w - w0||^2
                        p.grad.add_(p.detach() - anchor, alpha=cfg.l2sp)
                if cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                result.steps += 1
                result.examples += count
                record = {"stage": stage.name, "step": result.steps, "loss": loss, "lr": scheduler.get_last_lr()[0]}
                if result.steps % eval_every == 0 or result.steps == total_steps:
                    val = validate()
                    record.update({f"val_{k}": v for k, v in val.items() if isinstance(v, float)})
                    result.stopped_early = best.update(raw_model, result.steps, val)
                hooks.log(record)
                progress.step(**{k: v for k, v in record.items() if k in ("loss", "val_accuracy", "val_perplexity")})
                if result.steps >= total_steps or result.stopped_early:
                    break
    finally:
        # On success and on divergence alike, the model leaves with its best validated weights.
        progress.close()
        restore(raw_model, best.state)
    result.seconds = time.perf_counter() - started
    result.best_step, result.best_metrics = best.step, best.metrics
    return result


def _accumulate(model: nn.Module, group: list[dict], task, accelerator: Accelerator, precision: str) -> tuple[float, int]:
    """Forward and backward over the micro-batches of one optimizer step; (loss, example count).

    Each micro-batch's summed loss is divided by the count of the whole group, so the gradient
    equals that of one large batch, however the examples are split.
    """
    count = sum(task.count(batch) for batch in group)
    total = 0.0
    for batch in group:
        with autocast(accelerator, precision):
            logits = model(**_inputs(batch))
        loss = task.loss_sum(logits, batch) / count
        accelerator.backward(loss)
        # .item() syncs with the device: free on a CPU, and it catches a NaN at the step it
        # appears, before the optimizer writes it into the weights.
        total += loss.item()
    return total, count


class _Best:
    """The best validated weights so far, for early stopping and the final restore."""

    def __init__(self, model: nn.Module, metric: str, patience: int | None, metrics: dict, min_steps: int = 0):
        """`metrics`: the validation of the incoming weights (step 0), the ones to beat."""
        self.metric, self.patience, self.min_steps = metric, patience, min_steps
        self.score, self.state, self.step, self.metrics, self.stale = self._score(metrics), snapshot(model), 0, metrics, 0

    def _score(self, metrics: dict) -> tuple[float, ...]:
        """Higher is better. Accuracy, F1 and the like often tie on a small validation set (with the
        incoming weights too, whose head may be untrained): the lower loss breaks the tie."""
        if self.metric == "loss+general":
            return (-(metrics["loss"] + metrics["general_loss"]),)
        if self.metric == "loss":
            return (-metrics["loss"],)
        return metrics[self.metric], -metrics["loss"]

    def update(self, model: nn.Module, step: int, metrics: dict) -> bool:
        """Keep the weights if they validate best; True when patience has run out."""
        score = self._score(metrics)
        if score > self.score:
            self.score, self.state, self.step, self.metrics, self.stale = score, snapshot(model), step, metrics, 0
            return False
        if step > self.min_steps:
            self.stale += 1
        return self.patience is not None and self.stale >= self.patience


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[dict], task, accelerator: Accelerator, precision: str = "fp32") -> dict:
    """Loss and task metrics over `loader`, accumulated batch by batch (no logits are kept)."""
    was_training = model.training
    model.eval()
    state, loss_sum, count = task.metric_state(), 0.0, 0
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with autocast(accelerator, precision):
            logits = model(**_inputs(batch))
        loss_sum += task.loss_sum(logits, batch).item()
        count += task.count(batch)
        task.update(state, logits.float(), batch)
    model.train(was_training)
    return {"loss": loss_sum / max(count, 1), **task.metrics(state)}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of what training can change: trainable parameters and every buffer (norm statistics)."""
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return state


def restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, value in state.items():
            tensors[name].copy_(value)


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def _groups(loader: Iterable[dict], size: int) -> Iterator[list[dict]]:
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
