"""The one training loop every regime runs through: accumulate, clip, step, schedule, validate,
stop early, restore the best weights; and hand its state to a checkpoint between two steps, or take
it back from one (training/checkpoint.py)."""

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
from .sharding import is_sharded


class Diverged(Exception):
    """The training loss stopped being a finite number."""

    def __init__(self, stage: str, step: int, lr: float):
        super().__init__(f"loss became NaN or infinite at step {step} of stage '{stage}'")
        self.stage, self.step, self.lr = stage, step, lr


@dataclass
class FitResult:
    steps: int = 0
    examples: int = 0
    tokens: int | None = 0
    """Input positions trained on (padding excluded; one per cached feature vector); None for images."""
    seconds: float = 0.0
    step_seconds: float = 0.0
    """Of `seconds`, the optimizer steps' (forward, backward, update): no data loading, no validation."""
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


@dataclass
class LoopState:
    """Where a stage's loop stands between two optimizer steps: all it needs to go on exactly as if
    it had never stopped (with the RNG states, which the checkpoint takes itself). The position in
    the data follows from `steps`: every epoch's batch order depends only on (seed, epoch)."""

    steps: int
    examples: int
    seconds: float
    optimizer: dict
    scheduler: dict
    best: dict
    """_Best.state_dict(): the early-stopping record; its weights are in `best_weights`."""
    best_weights: dict[str, torch.Tensor]
    tokens: int | None = 0
    step_seconds: float = 0.0
    anchors: list[torch.Tensor] = field(default_factory=list)
    """The L2-SP anchors: the weights as the stage found them (empty without train.l2sp)."""


class Checkpoints:
    """Where the loop saves its state and finds it again. This default keeps nothing (a search's
    trials, an LR range test); runs use training/checkpoint.py's."""

    def due(self, step: int) -> bool:
        return False

    def save(self, state: LoopState) -> None: ...

    def resume(self) -> LoopState | None:
        """The state to go on from (restoring the RNGs as it was saved), or None to start the stage."""
        return None


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
    checkpoints: Checkpoints = field(default_factory=Checkpoints)


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
    raw_model, sampler = model, train_loader.batch_sampler
    # The loader is not handed to accelerate: every process reads the same global batches (the
    # same order whatever the number of processes) and trains on its share of each (_share).
    if not is_sharded(model):  # a sharded model exchanges its own gradients: no DDP wrapper around it
        model, optimizer = accelerator.prepare(model, optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # L2-SP: the weights as this stage found them (pre-trained, for a one-stage regime) anchor the penalty.
    anchors = [p.detach().clone() for p in trainable] if cfg.l2sp else []

    def validate() -> dict:
        val = evaluate(model, val_loader, task, accelerator, precision)
        return (val | hooks.extra_validation(model)) if hooks.extra_validation else val

    result = FitResult()
    # Patience counts only after min_steps: early validations (a fresh head, a small validation split)
    # are noisy, and stopping on them stops a run before it learns.
    min_steps = cfg.min_steps if cfg.min_steps is not None else total_steps // 3
    metric = cfg.metric or task.metric
    resumed = hooks.checkpoints.resume()
    if resumed is None:
        # Validated before the first step: a stage that only makes things worse hands back the
        # weights it was given (the previous stage's best), not its own least bad ones.
        best = _Best(raw_model, metric, cfg.patience, validate(), min_steps)
    else:
        best = _Best.from_state(metric, cfg.patience, min_steps, resumed.best, resumed.best_weights)
        optimizer.load_state_dict(resumed.optimizer)
        anchors = resumed.anchors
        scheduler.load_state_dict(resumed.scheduler)
        result.steps, result.examples, result.tokens, result.step_seconds = resumed.steps, resumed.examples, resumed.tokens, resumed.step_seconds
        # Pick the data up where it stopped: the epoch's order again, less the batches already trained on.
        sampler.set_epoch(result.steps // steps_per_epoch)
        sampler.skip = (result.steps % steps_per_epoch) * accumulation
    # Gradients an earlier stage left on these parameters (an L-BFGS head's last evaluation) would
    # add to this stage's first step.
    optimizer.zero_grad(set_to_none=True)
    progress.start(stage.name, total_steps)
    if result.steps:
        progress.step(result.steps)
    started = time.perf_counter() - (resumed.seconds if resumed else 0.0)
    try:
        while result.steps < total_steps and not result.stopped_early:
            model.train()
            for group in _groups(train_loader, accumulation):
                step_started = time.perf_counter()
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
                result.step_seconds += time.perf_counter() - step_started
                result.steps += 1
                result.examples += count
                result.tokens = _positions(group, result.tokens)
                record = {"stage": stage.name, "step": result.steps, "loss": loss, "lr": scheduler.get_last_lr()[0]}
                if result.steps % eval_every == 0 or result.steps == total_steps:
                    val = validate()
                    record.update({f"val_{k}": v for k, v in val.items() if isinstance(v, float)})
                    result.stopped_early = best.update(raw_model, result.steps, val)
                hooks.log(record)
                progress.step(**{k: v for k, v in record.items() if k in ("loss", "val_accuracy", "val_perplexity")})
                if result.steps >= total_steps or result.stopped_early:
                    break
                if hooks.checkpoints.due(result.steps):
                    hooks.checkpoints.save(LoopState(result.steps, result.examples, time.perf_counter() - started, optimizer.state_dict(),
                                                     scheduler.state_dict(), best.state_dict(), best.state, result.tokens, result.step_seconds,
                                                     anchors))  # fmt: skip
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
    equals that of one large batch, however the examples are split: into micro-batches, and
    across processes (each trains on its share of every micro-batch; DDP averages the gradients,
    so each share's loss is scaled by the number of processes).
    """
    count = sum(task.count(batch) for batch in group)  # the whole step's, over every process
    processes = accelerator.num_processes
    total = 0.0
    for i, batch in enumerate(group):
        share, weight = _share(batch, accelerator.process_index, processes)
        share = {k: v.to(accelerator.device) for k, v in share.items()}
        last = i == len(group) - 1  # gradients are exchanged between processes once per step
        with nullcontext() if last else accelerator.no_sync(model):
            with autocast(accelerator, precision):
                logits = model(**_inputs(share))
            loss = task.loss_sum(logits, share) / count
            if processes > 1:
                loss = loss * (weight * processes)
            accelerator.backward(loss)
        # .item() syncs with the device: free on a CPU, and it catches a NaN at the step it
        # appears, before the optimizer writes it into the weights.
        total += loss.item() / processes
    if processes > 1:  # every process sees the whole step's loss (and stops together on a NaN)
        total = accelerator.reduce(torch.tensor(total, dtype=torch.float64), "sum").item()
    return total, count


def _positions(group: list[dict], so_far: int | None) -> int | None:
    if so_far is None or "pixel_values" in group[0]:
        return None  # a convolution's work is not per position
    if "attention_mask" in group[0]:
        return so_far + sum(int(b["attention_mask"].sum()) for b in group)
    return so_far + sum(len(next(iter(b.values()))) for b in group)


def _share(batch: dict, rank: int, processes: int) -> tuple[dict, float]:
    """This process's examples of a batch (every `processes`-th, from `rank`) and their weight: a
    process left with none (a last batch smaller than the processes) runs one at weight 0, so that
    it still joins the gradient exchange."""
    if processes == 1:
        return batch, 1.0
    size = len(next(iter(batch.values())))
    if rank < size:
        return {k: v[rank::processes] for k, v in batch.items()}, 1.0
    return {k: v[:1] for k, v in batch.items()}, 0.0


def ranking(metric: str, metrics: dict) -> tuple[float, ...]:
    """How validations are ranked, higher first (early stopping here, a search's pruner in tune.py).
    Accuracy, F1 and the like often tie on a small validation set (with the incoming weights too,
    whose head may be untrained): the lower loss breaks the tie."""
    if metric == "loss+general":
        return (-(metrics["loss"] + metrics["general_loss"]),)
    if metric == "loss":
        return (-metrics["loss"],)
    return metrics[metric], -metrics["loss"]


class _Best:
    """The best validated weights so far, for early stopping and the final restore."""

    def __init__(self, model: nn.Module, metric: str, patience: int | None, metrics: dict, min_steps: int = 0):
        """`metrics`: the validation of the incoming weights (step 0), the ones to beat."""
        self.metric, self.patience, self.min_steps = metric, patience, min_steps
        self.score, self.state, self.step, self.metrics, self.stale = self._score(metrics), snapshot(model), 0, metrics, 0

    @classmethod
    def from_state(cls, metric: str, patience: int | None, min_steps: int, state: dict, weights: dict) -> _Best:
        """The record a checkpoint kept (`state_dict()`), with its weights."""
        best = cls.__new__(cls)
        best.metric, best.patience, best.min_steps, best.state = metric, patience, min_steps, weights
        best.score, best.step = tuple(state["score"]), state["step"]
        best.metrics, best.stale = state["metrics"], state["stale"]
        return best

    def state_dict(self) -> dict:
        """The record in JSON-ready form (the weights are saved apart, as tensors)."""
        return {"score": list(self.score), "step": self.step, "metrics": self.metrics, "stale": self.stale}

    def _score(self, metrics: dict) -> tuple[float, ...]:
        return ranking(self.metric, metrics)

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
    # Without DDP's wrapper: its forward exchanges buffers between processes, and here they run
    # different numbers of batches.
    model = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    state, loss_sum, count = task.metric_state(), 0.0, 0
    for batch, counted in _batches_of_this_process(loader, accelerator, is_sharded(model)):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with autocast(accelerator, precision):
            logits = model(**_inputs(batch))
        if not counted:
            continue
        loss_sum += task.loss_sum(logits, batch).item()
        count += task.count(batch)
        task.update(state, logits.float(), batch)
    model.train(was_training)
    if accelerator.num_processes > 1:  # every process gets the metrics of the whole split
        from accelerate.utils import gather_object

        from ..tasks.base import merge_states

        loss_sum, count = accelerator.reduce(torch.tensor([loss_sum, count], dtype=torch.float64), "sum").tolist()
        state = getattr(task, "merge_states", merge_states)(gather_object([state]))
    return {"loss": loss_sum / max(count, 1), **task.metrics(state)}


def _batches_of_this_process(loader, accelerator: Accelerator, even: bool = False) -> Iterable[tuple[dict, bool]]:
    """(batch, counted): evaluation batches, whole, dealt out in turn: batch i to process i mod N, and a
    process collates only its own. Nothing is padded or repeated to even them out, except with `even`
    (a sharded model, whose every forward is a collective): a process with none left in the last round
    runs a batch again, not counted."""
    processes, rank = accelerator.num_processes, accelerator.process_index
    if processes == 1:
        yield from ((batch, True) for batch in loader)
        return
    batches = list(loader.batch_sampler)
    end = math.ceil(len(batches) / processes) * processes if even else len(batches)
    for i in range(rank, end, processes):
        if i < len(batches):
            yield loader.collate_fn([loader.dataset[j] for j in batches[i]]), True
        else:
            yield loader.collate_fn([loader.dataset[j] for j in batches[0]]), False


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
