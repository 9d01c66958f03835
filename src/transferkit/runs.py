"""A run: data in, a trained model and its measurements out, in one folder.

    runs/<name>/
        config.yaml      the resolved configuration (every default filled in)
        metrics.jsonl    one JSON line per optimizer step (validation metrics where it validated)
        metrics.json     final test metrics and costs; its presence marks the run as finished
        model/           a Hugging Face model folder, or a PEFT adapter folder with the head; task.json
        report.html      the run's report

`train` reads as the recipe it is: data -> model -> task -> checks -> stages -> encode once ->
fit each stage -> test -> save. The model kind, the task and the regime are each asked, never
named: see models/base.py, tasks/base.py and methods/base.py for what each provides.
"""

from __future__ import annotations

import json
import random
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator

from . import card, folders, tasks, tracking
from .config import RunConfig, load_config
from .data.batching import make_loader
from .data.splits import Splits
from .errors import UserError
from .eval.forgetting import can_measure, general_validation, replay_items, start_forgetting
from .methods import REGIMES, check_fit, resolve_defaults
from .models import kind_of, load_model
from .report.html import read_log, run_report
from .tasks.sequence import eval_loader
from .training.features import HeadOnFeatures, cache_features
from .training.loop import Diverged, Hooks, Progress, fit


@dataclass
class Run:
    """A finished run: where it lives and what it measured."""

    dir: Path
    config: RunConfig
    metrics: dict
    task: object = None
    """The run's task (tasks/): it says how to read the metrics (`task.describe`)."""

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics["test"].get("accuracy")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 autocast where the hardware runs bf16 fast, fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # On CPUs with AVX512-BF16 / AMX, bf16 matmuls run about 4x faster than fp32 here.
    fast_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False
    )()
    return "bf16" if fast_bf16 else "fp32"


def train(
    config: RunConfig | str | Path | None = None,
    overrides: list[str] | dict | None = None,
    progress: Progress | None = None,
) -> Run:
    """Fine-tune a model as `config` says and write the run folder.

    Args:
        config: a RunConfig, a YAML file, or None for the defaults.
        overrides: `section.key=value` strings or a {"section.key": value} dict, applied on top.
        progress: receives step updates (the CLI draws a bar from them).

    Returns:
        The finished Run: its folder, resolved config and metrics.

    Raises:
        UserError: bad input (found before anything is written, so an existing run folder is
            untouched), or a loss that became NaN (the last good weights are saved first).
    """
    cfg = config if isinstance(config, RunConfig) and not overrides else load_config(config, overrides)
    cfg = cfg.with_dataset_defaults()
    progress = progress or Progress()
    folders.check_output(cfg.run_dir, cfg.overwrite)
    kind = kind_of(cfg.model)
    task = tasks.make(kind, cfg)
    regime = REGIMES[cfg.regime]
    check_fit(regime, kind, task, cfg.model.name, tasks.KIND_WORDS[kind], REGIMES)
    _check_mitigations(cfg, task)
    seed_everything(cfg.train.seed)
    splits = task.read(cfg.data, cfg.train.seed)
    model = load_model(cfg, task, progress.note)
    _check_data_fits(cfg, model, splits)
    if regime.cached_features and not model.can_split:
        raise UserError(model.why_no_split())
    if regime.check_model:
        regime.check_model(cfg, model)
    # config.yaml keeps the values used (the regime's defaults, the truncation length), whatever later defaults become.
    cfg = resolve_defaults(replace(cfg, model=replace(cfg.model, max_length=getattr(model, "max_length", None))))
    stages = regime.stages(cfg)
    for stage in stages:
        micro = cfg.train.micro_batch_size or stage.batch_size
        if stage.batch_size % micro:
            raise UserError(f"batch size {stage.batch_size} is not a multiple of train.micro_batch_size ({micro}); change one")

    # Everything above only reads. The run is built in a staging folder and swapped in at the end.
    staging, lock = folders.start_staging(cfg.run_dir)
    try:
        metrics = _train_into(staging, cfg, model, task, regime, splits, stages, progress)
    except Diverged as e:
        folders.save_model(model, staging / "model")
        folders.write_text(staging / "failure.json", json.dumps({"error": str(e), "stage": e.stage, "step": e.step, "lr": e.lr}))
        kept = folders.publish_failed(staging, cfg.run_dir, lock)
        raise UserError(
            f"training stopped: {e}; the last good weights are in {kept / 'model'}; lower train.lr (it was {e.lr:g})"
        ) from None
    except BaseException:
        folders.discard_staging(staging, lock)
        raise
    folders.publish(staging, cfg.run_dir, lock)
    return Run(cfg.run_dir, cfg, metrics, task)


def _check_mitigations(cfg: RunConfig, task) -> None:
    """Replay and the general-text metric use the language-model loss: they need a task on a causal LM's own head."""
    metric = cfg.train.metric or task.metric
    if metric not in task.stopping_metrics:
        raise UserError(f"train.metric={metric} is not measured on validation by the {task.name} task here; "
                        f"use one of: {', '.join(task.stopping_metrics)}")  # fmt: skip
    if (cfg.replay.ratio or metric == "loss+general") and task.head != "lm":
        raise UserError("replay and metric loss+general use the language-model loss: they need a causal LM; unset replay.ratio")


EXAMPLE_MODELS = {"text": "minilm-l6", "image": "efficientnet-lite0"}  # a built-in model for each kind of input


def _check_data_fits(cfg: RunConfig, model, splits: Splits) -> None:
    if model.modality != splits.modality:
        hint = EXAMPLE_MODELS[splits.modality]
        raise UserError(
            f"model '{cfg.model.name}' reads {model.modality}s but data '{cfg.data.name}' holds {splits.modality}s; "
            f"pick a {splits.modality} model, e.g. --model {hint}"
        )
    if splits.train.pairs is not None and not model.reads_pairs:
        raise UserError(f"text pairs (data.pair_column) go to a text encoder as (text, text_pair); '{cfg.model.name}' takes single "
                        "inputs: use an encoder such as minilm-l6, or join the two texts into one column")  # fmt: skip
    if cfg.forgetting.corpus and not can_measure(model):
        raise UserError("forgetting is measured on general text: it needs a text model; unset forgetting.corpus")


def _train_into(staging: Path, cfg: RunConfig, model, task, regime, splits: Splits, stages, progress) -> dict:
    """Every stage through the loop, then test and save; returns the final metrics."""
    folders.write_text(staging / "config.yaml", f"{folders.CONFIG_HEADER}\n# every value as this run used it: rerun with transferkit train THIS_FILE\n"
                       + yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))  # fmt: skip
    accelerator = Accelerator(**tracking.accelerator_options(cfg.train.report_to, staging))
    trackers = tracking.Trackers(accelerator, cfg)  # train.report_to: nothing when none
    precision = resolve_precision(cfg.train.precision, accelerator.device)
    ctx = tasks.Context(cfg, accelerator, precision, progress)
    model.to(accelerator.device)
    started = time.perf_counter()
    if regime.prepare:
        regime.prepare(model, task, splits, cfg)
    forgetting = start_forgetting(cfg, model, accelerator, precision, progress)
    # Encoded once: token ids for text (padding happens per batch), transformed images for vision.
    notes: list[str] = []  # what encoding said (e.g. that the tokens came from the cache), kept in metrics.json
    note = lambda message: notes.append(message) or progress.note(message)  # noqa: E731
    items = {name: task.encode(model, getattr(splits, name), train=name == "train", note=note) for name in ("train", "validation", "test")}
    if cfg.replay.ratio:
        items["train"] = list(items["train"]) + replay_items(cfg, model, len(items["train"]))
    hooks = Hooks(progress=progress)
    if (cfg.train.metric or task.metric) == "loss+general":
        hooks.extra_validation = general_validation(cfg, model, accelerator, precision)
    features, summary = None, {"stages": []}
    with open(staging / "metrics.jsonl", "w") as log_file:
        log = lambda record: log_file.write(json.dumps(record) + "\n") or log_file.flush()  # noqa: E731
        hooks.log = trackers.feed(log)
        for stage in stages:
            stage.apply(model)
            if stage.cached and features is None:
                features, summary["cache_seconds"] = _cache_features(model, items, ctx)
            trainee, data = (HeadOnFeatures(model), features) if stage.cached else (model, items)
            micro = cfg.train.micro_batch_size or stage.batch_size
            train_loader = make_loader(data["train"], micro, True, cfg.train.seed, model.pad_id)
            result = fit(trainee, train_loader, eval_loader(data["validation"], model.pad_id), task, accelerator, stage, cfg.train, precision, hooks)
            summary["stages"].append(_stage_summary(stage, result, trainee))
    # The test set goes through the same path as training did last: the cache for a head-only
    # regime (so the backbone still runs only once), the whole model otherwise.
    final_model, final_items = (HeadOnFeatures(model), features) if stages and stages[-1].cached else (model, items)
    chosen = task.after_training(final_model, final_items["validation"], ctx)
    train_seconds = time.perf_counter() - started
    test, extra = task.test(final_model, splits.test, final_items["test"], ctx)
    if forgetting is not None:
        extra["forgetting"] = forgetting.measure(model)
    folders.save_model(_Saved(model, task), staging / "model")
    metrics = {
        "regime": cfg.regime,
        "task": task.name,
        "model": cfg.model.name,
        "data": {
            "name": cfg.data.name,
            **{n: len(getattr(splits, n)) for n in ("train", "validation", "test")},
            "skipped_files": splits.skipped,
            "notes": notes,
        },
        "labels": task.label_names,
        "columns": task.columns,
        "headlines": list(task.headlines),
        "test": test,
        "validation": summary["stages"][-1]["best_validation"] if summary["stages"] else {},
        "parameters": _parameter_counts(model),
        "train_seconds": train_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if accelerator.device.type == "cuda" else None,
        "precision": precision,
        "model_size_mb": folders.folder_size(staging / "model") / 2**20,
        **({"chosen_on_validation": chosen} if chosen else {}),
        **summary,
        **extra,
    }
    folders.write_text(staging / "metrics.json", json.dumps(metrics, indent=2))
    folders.write_text(staging / "report.html", run_report(metrics, read_log(staging), (staging / "config.yaml").read_text()))
    card.write_model_card(staging, cfg, metrics)
    trackers.finish(metrics)
    return metrics


class _Saved:
    """What `folders.save_model` writes: the model's own folder, then the task's task.json in it."""

    def __init__(self, model, task):
        self.model, self.task = model, task

    def save(self, folder: Path) -> None:
        self.task.before_save(self.model)
        self.model.save(folder)
        tasks.write_task_file(self.task, folder)


def _cache_features(model, items: dict, ctx) -> tuple[dict, float]:
    """The frozen backbone's features of every split, computed once."""
    started = time.perf_counter()
    loaders = {n: eval_loader(split, model.pad_id) for n, split in items.items()}
    ctx.progress.start("caching features", sum(len(loader) for loader in loaders.values()))
    features = {n: cache_features(model, loader, ctx.accelerator, ctx.precision, ctx.progress) for n, loader in loaders.items()}
    ctx.progress.close()
    return features, time.perf_counter() - started


def _stage_summary(stage, result, trainee) -> dict:
    return {
        "name": stage.name,
        "lr": stage.lr,
        "epochs": stage.epochs,
        "steps": result.steps,
        "examples": result.examples,
        "seconds": result.seconds,
        "examples_per_second": result.examples / max(result.seconds, 1e-9),
        "stopped_early": result.stopped_early,
        "best_step": result.best_step,
        "best_validation": {k: v for k, v in result.best_metrics.items() if isinstance(v, float)},
        "trainable_parameters": sum(p.numel() for p in trainee.parameters() if p.requires_grad),
    }


def _parameter_counts(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_percent": 100 * trainable / total}
