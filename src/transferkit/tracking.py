"""Experiment trackers (`train.report_to`): TensorBoard, Trackio, MLflow, W&B, through accelerate's.

The trackers are accelerate's own (`Accelerator(log_with=...)`, `init_trackers`, `log`,
`end_training`); this module only says what goes to them. They see what metrics.jsonl holds,
one point per optimizer step, plus the resolved configuration at the start and the final
metrics at the end. Their step is the optimizer step counted over the whole run, so the stages
of a staged run follow one another on one axis (metrics.jsonl counts steps per stage).

TensorBoard writes its event files into the run folder (`tensorboard/`); the others write where
their own settings say (W&B: `WANDB_DIR`, `WANDB_MODE=offline`; MLflow: `MLFLOW_TRACKING_URI`;
Trackio: its local store), under the project "transferkit" and a run named after the run folder.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

# report_to name -> the package its tracker needs (accelerate drops a tracker whose package is
# missing without a word, so transferkit checks first).
TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "mlflow": "mlflow", "wandb": "wandb"}
PROJECT = "transferkit"
TENSORBOARD_DIR = "tensorboard"  # inside the run folder


def check_names(names: list[str]) -> None:
    """Refuse names accelerate has no tracker for, and `none` beside a tracker."""
    unknown = [n for n in names if n not in TRACKERS and n != "none"]
    if unknown:
        raise UserError(f"train.report_to: unknown tracker '{unknown[0]}'; choose from {', '.join(TRACKERS)} or none (several: tensorboard,wandb)")
    if "none" in names and len(names) > 1:
        raise UserError("train.report_to: 'none' cannot stand beside a tracker; name the trackers alone, or none")


def accelerator_options(report_to: list[str] | None, run_folder: Path) -> dict:
    """Keyword arguments of `Accelerator` that turn on the trackers `report_to` names (none: {})."""
    from accelerate.tracking import TensorBoardTracker

    names = [n for n in report_to or [] if n != "none"]
    missing = [n for n in names if importlib.util.find_spec(TRACKERS[n]) is None]
    if missing:
        raise UserError(f"train.report_to={missing[0]} needs the {TRACKERS[missing[0]]} package; install it with: "
                        f"pip install {TRACKERS[missing[0]]} (or drop it from train.report_to)")  # fmt: skip
    if not names:
        return {}
    # TensorBoard as a ready tracker: its files then land in run_folder/tensorboard, not in a
    # folder named after the project.
    return {"log_with": [TensorBoardTracker(TENSORBOARD_DIR, run_folder) if n == "tensorboard" else n for n in names]}


class Trackers:
    """The trackers of one run; every method does nothing when `train.report_to` is none."""

    def __init__(self, accelerator, cfg):
        """Open the trackers' run, with the resolved configuration as its hyperparameters."""
        self.accelerator, self.steps = accelerator, 0
        if accelerator.log_with:
            name = cfg.run_dir.name
            accelerator.init_trackers(PROJECT, config=flat_config(cfg.to_dict()),
                                      init_kwargs={"wandb": {"name": name}, "trackio": {"name": name}, "mlflow": {"run_name": name}})  # fmt: skip

    def feed(self, log: Callable[[dict], None]) -> Callable[[dict], None]:
        """`log` (the metrics.jsonl writer), which now also sends each record to the trackers."""
        if not self.accelerator.log_with:
            return log

        def log_and_track(record: dict) -> None:
            log(record)
            self.steps += 1  # one record per optimizer step, counted over every stage
            self.accelerator.log(numbers(record, skip=("step",)), step=self.steps)

        return log_and_track

    def finish(self, metrics: dict) -> None:
        """Send the final metrics (at the last step) and close the trackers' run."""
        if not self.accelerator.log_with:
            return
        final = {f"test_{k}": v for k, v in numbers(metrics["test"]).items()}
        final |= {f"forgetting_{k}": v for k, v in numbers(metrics.get("forgetting") or {}).items()}
        final |= numbers({k: metrics.get(k) for k in ("train_seconds", "peak_rss_mb", "peak_gpu_mb", "model_size_mb")})
        self.accelerator.log(final, step=self.steps)
        self.accelerator.end_training()


def numbers(values: dict, skip: tuple[str, ...] = ()) -> dict:
    """The plain numbers of `values` (trackers plot numbers; labels and tables stay in metrics.json)."""
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip}


def flat_config(values: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}; lists as text (hyperparameter tables hold scalars)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flat_config(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = ",".join(map(str, value)) if isinstance(value, list) else value
    return flat
