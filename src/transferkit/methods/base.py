"""The regime protocol: what one regime declares about itself.

A regime differs from another only in which parameters train, in which stages, what is cached and
which modules are wrapped or prepended; all of them run through the one loop in training/loop.py.
So a regime is data: its stages, the model kinds and task heads it can train, the defaults it was
tuned with, and a hook for the one regime that trains nothing (icl chooses its demonstrations).
The checks that a (model, task, regime) triple goes together are made from these declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import UserError


@dataclass
class Stage:
    """One call of the training loop."""

    name: str
    apply: Callable[[nn.Module], None]
    """Sets requires_grad (and wraps modules) on the model; what has requires_grad is what trains."""
    lr: float
    epochs: int
    cached: bool = False
    """Train only `forward_head` on features the frozen backbone computed once."""
    layer_decay: float = 1.0
    """Learning rate multiplier per layer going down from the head (1.0: the same everywhere)."""
    batch_size: int = 16
    """Examples per optimizer step."""
    max_steps: int | None = None
    """Stop after this many optimizer steps, whatever `epochs` says."""
    solver: str = "adam"
    """"adam": the training loop (training/loop.py); "lbfgs": a head on cached features fit to convergence,
    full batch, one fit per L2 strength, the best on validation kept (training/probe.py)."""
    l2_grid: tuple[float, ...] | None = None
    """The L2 strengths the lbfgs solver tries (None: probe.L2_GRID)."""


@dataclass(frozen=True)
class Regime:
    """A way of adapting a model, declared once."""

    name: str
    summary: str
    """What trains, in a few words (help texts and the README table)."""
    build: Callable[[object], list[Stage]]
    """The stages for a RunConfig whose train.lr / epochs / batch_size are filled in (see `stages`)."""
    kinds: tuple[str, ...]
    """Model kinds it runs on: "encoder", "causal", "image"."""
    heads: tuple[str, ...]
    """Task heads it can train: "sequence" (a new head on one vector per input), "lm" (the model's own
    language-model head), "token", "span"."""
    requirement: str
    """Why it may not fit, said in an error: e.g. "trains a new head on cached backbone features"."""
    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    """Defaults, chosen on BBC News validation accuracy unless the module says otherwise."""
    min_steps: int | None = None
    """On small data the default epochs make too few optimizer steps to learn: epochs are raised (when
    train.epochs is empty) until the run makes at least this many, at most max_epochs."""
    max_epochs: int = 30
    cached_features: bool = False
    """It trains a head on features the frozen backbone computed once: the model must split there."""
    control: bool = False
    """A baseline that is never suggested as a fix (scratch)."""
    prepare: Callable[[object, object, object, object], None] | None = None
    """prepare(model, task, splits, cfg) before anything is encoded (icl: choose the demonstrations)."""
    check_model: Callable[[object, object], None] | None = None
    """check_model(cfg, model): refuse, before any work, what only the loaded model shows (lora.targets it lacks)."""
    fill: Callable[[object], object] | None = None
    """fill(cfg) -> cfg: defaults of the regime's own section, filled in before train.* (staged's head batch)."""

    def fits(self, kind: str, head: str) -> bool:
        return kind in self.kinds and head in self.heads

    def stages(self, cfg) -> list[Stage]:
        return self.build(self.resolve(cfg))

    def resolve(self, cfg, train_examples: int | None = None):
        """`cfg` with this regime's learning rate, epochs and batch size where train.* left them empty;
        with `train_examples` known, the epochs are raised for small data (see min_steps)."""
        import math
        from dataclasses import replace

        cfg = self.fill(cfg) if self.fill else cfg
        t = cfg.train
        filled = {key: getattr(t, key) if getattr(t, key) is not None else getattr(self, key) for key in ("lr", "epochs", "batch_size")}
        if t.epochs is None and t.max_steps is None and self.min_steps and train_examples and filled["batch_size"]:
            steps_per_epoch = math.ceil(train_examples / filled["batch_size"])
            filled["epochs"] = min(max(filled["epochs"], math.ceil(self.min_steps / steps_per_epoch)), max(self.max_epochs, filled["epochs"]))
        return replace(cfg, train=replace(t, **filled))


def check_fit(regime: Regime, kind: str, task, model_name: str, kind_words: str, regimes: dict[str, Regime]) -> None:
    """One line naming what would work when `regime` cannot train `task` on a model of `kind`."""
    if regime.fits(kind, task.head):
        return
    working = [r.name for r in regimes.values() if r.fits(kind, task.head) and not r.control]
    suggestion = f"use {', '.join(working[:-1])} or {working[-1]}" if len(working) > 1 else f"use {working[0]}" if working else ""
    if kind not in regime.kinds:
        raise UserError(f"regime {regime.name} {regime.requirement}, and '{model_name}' is {kind_words}; {suggestion}")
    raise UserError(f"regime {regime.name} cannot train the {task.name} task's head on {kind_words} ({regime.requirement}); {suggestion}")


def freeze_all_but(model: nn.Module, trainable: list[nn.Parameter]) -> None:
    model.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)


def wrap_with_peft(make_config: Callable) -> Callable[[nn.Module], None]:
    """An `apply` that adds `peft` adapters to the model; make_config(model) -> PeftConfig.

    peft freezes the base weights and marks the adapter (and `modules_to_save`) trainable.
    """

    def apply(model) -> None:
        try:
            model.add_adapter(make_config(model))
        except ValueError as e:  # e.g. target modules that the model does not have
            first_line = str(e).strip().splitlines()[0]
            raise UserError(f"cannot add the adapters: {first_line}; check lora.targets against the model's module names") from None

    return apply
