"""Hyperparameter search for any regime: Optuna's TPE sampler, successive halving on the validation curve.

Each trial is a `train(..., trial=True)` run: the test split is never encoded or scored, and no model
is written. A trial reports its validation metric at each validation. Successive halving (Jamieson &
Talwalkar 2016; asynchronous, as in ASHA) lets a trial go on past its 1st, 4th, 16th, ... validation
only if it is among the best quarter of the trials that reached that validation (ties broken by the
validation loss), so most trials cost a validation or four and the budget goes to the promising
ones (a pruned run's staging folder is removed, as on Ctrl-C). A trial that fails (a loss that
became NaN, a setting the model refuses) is recorded as failed, with the reason, and the search goes
on. The first trial is the regime's defaults (the space is centred on them), so a search ends with
the defaults or something better on validation.

    runs/tune-<data>-<regime>/
        tune.yaml     the base configuration and the search's own settings
        trials/NNN/   each finished trial's config.yaml, metrics.jsonl, metrics.json
        tune.json     every trial: its number, state, values, validation metric, seconds, error
        tune.md       the same as a table
        best.yaml     the best trial's configuration, for the whole data: `transferkit train best.yaml`
        report.html   the metric against each hyperparameter and against trial number
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import folders
from .config import RunConfig, load_config
from .errors import UserError
from .methods import REGIMES
from .training.loop import ranking

LOWER_IS_BETTER = ("loss", "loss+general", "rmse", "mae", "perplexity")
HALVING = 4  # successive halving's reduction factor: rungs at validations 1, 4, 16, ...; a quarter go on
# The pruner ranks validations as early stopping does (`training.loop.ranking`: the metric, ties
# broken by the validation loss), folded into one number: on a small validation split many trials
# reach the same accuracy, and Optuna promotes a tie, so without it most of them would run to the
# end. The loss weighs far less than one example's share of the metric.
TIE_BREAK = 1e-6


# Each space is centred on the regime's own defaults as resolved for this data (`d`, a RunConfig):
# the rate a decade either side (or either side of an LR finder's suggestion), the epochs from a third
# to twice the default (which on small data is already raised to make enough steps), so the defaults
# are always a point the search can find.


def _space_full(trial, d, lr_centre):
    return {"train.lr": _lr(trial, d, lr_centre), "train.epochs": _epochs(trial, d),
            "train.batch_size": trial.suggest_categorical("train.batch_size", [8, 16, 32]),
            "train.weight_decay": trial.suggest_categorical("train.weight_decay", [0.0, 0.01, 0.1])}  # fmt: skip


def _space_lora(trial, d, lr_centre):
    r = trial.suggest_categorical("lora.r", [4, 8, 16, 32])
    return {**_space_full(trial, d, lr_centre), "lora.r": r, "lora.alpha": r * trial.suggest_categorical("lora.alpha_over_r", [1, 2, 4])}


# Sampled names that are no config field, and how the defaults give them (the defaults trial's walk).
DERIVED = {"lora.alpha_over_r": lambda d: d.lora.alpha / d.lora.r if d.lora.r else None}


def _space_prompt(trial, d, lr_centre):
    return {"train.lr": _lr(trial, d, lr_centre), "train.epochs": _epochs(trial, d),
            "train.batch_size": trial.suggest_categorical("train.batch_size", [8, 16, 32]),
            "prompt.num_virtual_tokens": trial.suggest_categorical("prompt.num_virtual_tokens", [8, 20, 40])}  # fmt: skip


def _space_staged(trial, d, lr_centre):
    return {"train.lr": _lr(trial, d, lr_centre), "train.epochs": _epochs(trial, d),
            "staged.layer_decay": trial.suggest_float("staged.layer_decay", 0.5, 1.0),
            "train.batch_size": trial.suggest_categorical("train.batch_size", [8, 16, 32])}  # fmt: skip


def _space_freeze(trial, d, lr_centre):
    if d.freeze.solver == "adam":
        return {"train.lr": _lr(trial, d, lr_centre), "train.epochs": _epochs(trial, d)}
    # The probe already picks its L2 strength from a grid on validation; the search widens that to one
    # continuous strength.
    return {"freeze.l2": [str(trial.suggest_float("freeze.l2", 1e-6, 10.0, log=True))]}


def _space_scratch(trial, d, lr_centre):
    return {"train.lr": _lr(trial, d, lr_centre), "train.epochs": _epochs(trial, d),
            "train.batch_size": trial.suggest_categorical("train.batch_size", [16, 32, 64])}  # fmt: skip


def _space_icl(trial, d, lr_centre):
    from .eval.calibration import MODES

    return {"icl.shots": str(trial.suggest_categorical("icl.shots", [0, 1, 2, 4, 8, 16])),
            "icl.calibrate": trial.suggest_categorical("icl.calibrate", list(MODES))}  # fmt: skip


SPACES: dict[str, Callable] = {"full": _space_full, "lora": _space_lora, "prompt": _space_prompt, "staged": _space_staged,
                               "freeze": _space_freeze, "scratch": _space_scratch, "icl": _space_icl}  # fmt: skip


class _DefaultsTrial:
    """Walks a search space and answers each suggestion with the value the defaults (`d`) already use,
    recording those that lie inside the space: the point the search enqueues as its first trial."""

    number = 0  # the trial it becomes

    def __init__(self, d: RunConfig):
        self.d, self.params = d, {}

    def _default(self, name: str):
        if name in DERIVED:
            return DERIVED[name](self.d)
        section, _, key = name.partition(".")
        return getattr(getattr(self.d, section, None), key, None)

    def _keep(self, name: str, value, otherwise):
        """The default when it lies in the space (recorded), else `otherwise` (left to the sampler)."""
        if value is None:
            return otherwise
        self.params[name] = value
        return value

    def suggest_float(self, name, low, high, log=False):
        value = _number(self._default(name))
        return self._keep(name, float(value) if value is not None and low <= value <= high else None, low)

    def suggest_int(self, name, low, high):
        value = _number(self._default(name))
        return self._keep(name, value if isinstance(value, int) and low <= value <= high else None, low)

    def suggest_categorical(self, name, choices):
        value = self._default(name)
        return self._keep(name, next((c for c in choices if c == value or str(c) == str(value)), None), choices[0])


def _number(value):
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def defaults_point(regime: str, d: RunConfig, lr_centre: float | None) -> dict:
    """The sampled parameters that make `regime`'s search space give the defaults (those of them the
    space holds): trial 0 of every search, so that the best trial is never worse than the defaults on
    validation. A default outside the space (a rate beyond an LR finder's range) is left to the sampler."""
    trial = _DefaultsTrial(d)
    SPACES[regime](trial, d, lr_centre)
    return trial.params


def _lr(trial, d, centre: float | None) -> float:
    """Log-uniform over a decade either side of the default rate, or of an LR finder's suggestion."""
    centre = centre or d.train.lr
    return trial.suggest_float("train.lr", centre / 10, centre * 10, log=True)


def _epochs(trial, d) -> int:
    return trial.suggest_int("train.epochs", max(1, d.train.epochs // 3), max(2, 2 * d.train.epochs))


@dataclass
class Search:
    """A finished search: its folder, every trial, the best one."""

    dir: Path
    metric: str
    direction: str
    trials: list[dict] = field(default_factory=list)
    best: dict | None = None
    best_config: RunConfig | None = None


def tune(base: RunConfig, trials: int | None = 20, minutes: float | None = None, output: str | Path | None = None,
         train_size: int | None = None, lr_centre: float | None = None, on_trial: Callable[[dict], None] = lambda row: None,
         progress=None) -> Search:  # fmt: skip
    """Search `base.regime`'s hyperparameters on `base`'s data; the test split is never looked at.

    Args:
        trials / minutes: the budget (either or both; the search stops at whichever comes first).
        train_size: trials train on this many examples (a stratified subset), not the whole training
            split; validation is always the whole validation split. best.yaml is for the whole data.
        lr_centre: centre the learning-rate range on this (an LR finder's suggestion).
        on_trial: called with each trial's row as it finishes (number, state, values, value, seconds).
    """
    import optuna

    if base.regime not in SPACES:
        raise UserError(f"transferkit tune has no search space for regime '{base.regime}'; choose from: {', '.join(SPACES)}")
    if trials is None and minutes is None:
        raise UserError("give the search a budget: --trials N and/or --minutes M")
    if trials is not None and trials < 1 or minutes is not None and not minutes > 0:
        raise UserError("--trials must be at least 1 and --minutes positive")
    base = base.with_dataset_defaults()
    out = Path(output or Path("runs") / f"tune-{Path(base.data.name).stem}-{base.regime}")
    folders.check_output(out, base.overwrite, kind="search")
    from .runs import prepare

    setup = prepare(load_config(base, {"output": str(out / "trials" / "check"), "data.train_size": train_size or base.data.train_size}),
                    check_output=False)  # bad data, a bad model: refused here, before any trial  # fmt: skip
    task = setup.task
    metric = base.train.metric or task.metric
    direction = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    staging, lock = folders.start_staging(out)
    search = Search(out, metric, direction)
    try:
        settings = {"regime": base.regime, "metric": metric, "direction": direction, "trials": trials, "minutes": minutes,
                    "train_size": train_size, "lr_centre": lr_centre, "sampler": "TPE",
                    "pruner": f"successive halving (every {HALVING}x validations, the best 1/{HALVING} go on; ties broken by validation loss)"}  # fmt: skip
        folders.write_text(staging / "tune.yaml", f"{folders.SEARCH_HEADER}\n# the search's settings, then the base configuration of every trial\n"
                           + yaml.safe_dump({"search": settings, "base": base.to_dict()}, sort_keys=False, allow_unicode=True))  # fmt: skip
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is our row with its reason, not Optuna's traceback
        study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=base.train.seed),
                                    pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=HALVING))  # fmt: skip
        study.enqueue_trial(defaults_point(base.regime, setup.cfg, lr_centre))  # the first trial always runs to its end: make it the defaults
        deadline = time.monotonic() + minutes * 60 if minutes else None
        objective = _objective(base, setup.cfg, staging, metric, train_size, lr_centre, progress, deadline)

        def finished(study, frozen) -> None:
            row = _row(frozen)
            search.trials.append(row)
            on_trial(row)

        study.optimize(objective, n_trials=trials, timeout=minutes * 60 if minutes else None, catch=(UserError, RuntimeError),
                       callbacks=[finished])  # fmt: skip
        done = [t for t in search.trials if t["state"] == "complete"]
        if not done:
            first = next((t.get("error") for t in search.trials if t.get("error")), "every trial was pruned")
            raise UserError(f"no trial of the search finished; the first said: {first}")
        search.best = min(done, key=lambda t: t["value"]) if direction == "minimize" else max(done, key=lambda t: t["value"])
        search.best_config = load_config(base, {**_for_whole_data(search.best["overrides"], base, setup.cfg, train_size), "overwrite": False})
        folders.write_text(staging / "best.yaml", f"{folders.CONFIG_HEADER}\n# the best trial of transferkit tune ({metric} "
                           f"{search.best['value']:.4f} on validation, trial {search.best['number']}): transferkit train THIS_FILE\n"
                           + yaml.safe_dump(search.best_config.to_dict(), sort_keys=False, allow_unicode=True))  # fmt: skip
        from .report.html import search_report

        folders.write_text(staging / "tune.md", _markdown(_table_header(search), _table_rows(search)))
        folders.write_text(staging / "report.html", search_report(search, _table_header(search), _table_rows(search)))
        folders.write_text(staging / "tune.json", json.dumps({"settings": settings, "best": search.best, "trials": search.trials}, indent=2))
    except BaseException:
        folders.discard_staging(staging, lock)
        raise
    folders.publish(staging, out, lock, kind="search")
    return search


def _for_whole_data(overrides: dict, base: RunConfig, subset_defaults: RunConfig, train_size: int | None) -> dict:
    """The best trial's settings for the whole training split. Epochs found on a subset are scaled by
    the ratio of the defaults (on small data the defaults raise the epochs so a run makes enough
    steps): 23 epochs where the subset's default was 16 become round(23 / 16 * 3) = 4 where the whole
    split's default is 3."""
    if not train_size or "train.epochs" not in overrides:
        return overrides
    from .runs import prepare

    whole = prepare(load_config(base, {"output": str(Path(base.run_dir) / "check")}), check_output=False).cfg  # reads, writes nothing
    scaled = max(1, round(overrides["train.epochs"] / subset_defaults.train.epochs * whole.train.epochs))
    return {**overrides, "train.epochs": scaled}


def _objective(base: RunConfig, defaults: RunConfig, staging: Path, metric: str, train_size: int | None, lr_centre: float | None,
               progress, deadline: float | None = None):  # fmt: skip
    import optuna

    from .runs import train

    def objective(trial) -> float:
        values = SPACES[base.regime](trial, defaults, lr_centre)
        trial.set_user_attr("overrides", values)
        folder = staging / "trials" / f"{trial.number:03d}"
        overrides = {**values, "output": str(folder), "overwrite": True}
        if train_size:
            overrides["data.train_size"] = train_size
        validations = [0]

        def on_log(record: dict) -> None:
            if deadline is not None and time.monotonic() > deadline:
                # --minutes is a budget, not a hint: a trial still running when it ends is stopped.
                trial.set_user_attr("stopped", "the --minutes budget ran out")
                raise optuna.TrialPruned("the --minutes budget ran out")
            value = record.get(f"val_{metric}")
            if value is None or not math.isfinite(value):
                return
            validations[0] += 1
            trial.set_user_attr("last_validation", value)  # a pruned trial's row shows this, not the tie-broken rank
            trial.report(_ranked(value, record.get("val_loss"), metric), validations[0])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at validation {validations[0]} ({metric} {value:.4f})")

        started = time.perf_counter()
        try:
            run = train(load_config(base, overrides), progress=progress, on_log=on_log, trial=True)  # a bad value: UserError
        except UserError as e:
            trial.set_user_attr("error", str(e))
            trial.set_user_attr("seconds", time.perf_counter() - started)
            raise
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", time.perf_counter() - started)
            raise
        trial.set_user_attr("seconds", time.perf_counter() - started)
        validation = run.metrics["validation"]
        value = validation.get(metric)
        if value is None:  # loss+general and the like: the training loop's own validation of the kept weights
            value = run.metrics["stages"][-1]["best_validation"][metric]
        if not math.isfinite(value):
            raise UserError(f"the trial's validation {metric} is not a number")
        return float(value)

    return objective


def _ranked(value: float, loss: float | None, metric: str) -> float:
    """A validation as the pruner ranks it: `ranking`'s tie-break by the loss, folded into the metric."""
    if metric in LOWER_IS_BETTER or loss is None or not math.isfinite(loss):
        return value
    primary, tie = ranking(metric, {metric: value, "loss": loss})
    return primary + TIE_BREAK * max(tie, -100.0)


def _row(frozen) -> dict:
    state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(frozen.state.name, frozen.state.name.lower())
    overrides = frozen.user_attrs.get("overrides", {})
    value = frozen.user_attrs.get("last_validation", frozen.value) if state == "pruned" else frozen.value
    return {"number": frozen.number, "state": state, "value": value, "params": {k: _value(v) for k, v in overrides.items()},
            "sampled": frozen.params, "overrides": overrides, "seconds": frozen.user_attrs.get("seconds"),
            "error": frozen.user_attrs.get("error") or frozen.user_attrs.get("stopped"),
            "pruned_at": max(frozen.intermediate_values) if state == "pruned" and frozen.intermediate_values else None}  # fmt: skip


def _table_header(search: Search) -> list[str]:
    names = list(dict.fromkeys(k for t in search.trials for k in t["params"]))
    return ["trial", "state", f"validation {search.metric}", *names, "seconds"]


def _table_rows(search: Search) -> list[list[str]]:
    names = _table_header(search)[3:-1]
    rows = []
    for t in search.trials:
        state = "stopped by --minutes" if t["state"] == "pruned" and t.get("error") else t["state"]
        state += (f" (validation {t['pruned_at']})" if t.get("pruned_at") else "") + (" *" if t is search.best else "")
        rows.append([str(t["number"]), state, "" if t["value"] is None else f"{t['value']:.4f}",
                     *[_shown(t["params"].get(n)) for n in names], "" if t["seconds"] is None else f"{t['seconds']:.0f}"])  # fmt: skip
    return rows


def _value(v):
    """A config value as a table shows and a plot places it: freeze.l2's one-item list as its number."""
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    try:
        return float(v) if isinstance(v, str) else v
    except ValueError:
        return v


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _shown(value) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
