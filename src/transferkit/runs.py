"""A run: data in, a trained model and its measurements out, in one folder.

    runs/<name>/
        config.yaml      the resolved configuration (every default filled in)
        metrics.jsonl    one JSON line per optimizer step (validation metrics where it validated)
        metrics.json     final test metrics and costs; its presence marks the run as finished
    runs/<name>.partial/ the run while it is built; after an interruption, its last checkpoint
                     (training/checkpoint.py), from which the same command goes on
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
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs

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
from .training import checkpoint, sharding
from .training.features import HeadOnFeatures, cache_features
from .training.loop import Diverged, Hooks, Progress, fit
from .training.probe import fit_probe


@dataclass
class Run:
    """A finished run: where it lives and what it measured."""

    dir: Path
    config: RunConfig
    metrics: dict
    task: object = None
    """The run's task (tasks/): it says how to read the metrics (`task.describe`)."""
    reused: bool = False
    """Found finished in its folder (train(reuse=True)), not trained by this call."""
    worker: bool = False
    """Trained as one of several processes, not the main one: the main one wrote the folder and has
    the metrics (these are empty)."""

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
    on_log: Callable[[dict], None] | None = None,
    trial: bool = False,
    reuse: bool = False,
) -> Run:
    """Fine-tune a model as `config` says and write the run folder.

    Args:
        config: a RunConfig, a YAML file, or None for the defaults.
        overrides: `section.key=value` strings or a {"section.key": value} dict, applied on top.
        progress: receives step updates (the CLI draws a bar from them).
        on_log: called with each record written to metrics.jsonl (a search's pruner watches the
            validation curve; what it raises ends the run, and the half-built folder is removed).
        trial: a search trial: the test split is neither encoded nor scored (a search must never
            see it), and no model or report is written: config.yaml, metrics.jsonl, metrics.json.
        reuse: when the run folder already holds a finished run of this same configuration and data,
            return it instead of training again (a comparison that is run again after an interruption).

    Returns:
        The finished Run: its folder, resolved config and metrics.

    Raises:
        UserError: bad input (found before anything is written, so an existing run folder is
            untouched), or a loss that became NaN (the last good weights are saved first).
    """
    processes = _processes()
    if not processes.is_main_process:
        return _train_as_worker(prepare(config, overrides, Progress(), check_output=False), on_log, trial)
    progress = progress or Progress()
    # Checkpoints hold one process's RNG states: a run of several processes takes none (see README).
    setup = prepare(config, overrides, progress, resumable=not trial and processes.num_processes == 1)
    cfg, model, task = setup.cfg, setup.model, setup.task
    staging = folders.staging_of(cfg.run_dir)
    if processes.num_processes > 1 and cfg.train.resume != "never" and checkpoint.exists(staging):
        raise UserError(f"'{staging}' holds the checkpoint of an interrupted run, and a run of several processes cannot go on "
                        "from it; run without --processes to go on, or pass --no-resume to discard it")  # fmt: skip
    if reuse and (finished := _same_finished_run(setup)):
        progress.note(f"{cfg.run_dir} already holds a finished run of this configuration and data: kept, not run again")
        return finished

    # Everything above only reads. The run is built in a staging folder and swapped in at the end.
    keep = checkpoint.is_checkpoint_file if setup.resumed else (lambda entry: False)
    staging, lock = folders.start_staging(cfg.run_dir, keep)
    try:
        metrics, cfg = _train_into(staging, setup, progress, on_log, trial)
    except Diverged as e:
        checkpoint.remove(staging)
        folders.save_model(setup.model, staging / "model")  # the run's own or, sharded, its gathered copy
        folders.write_text(staging / "failure.json", json.dumps({"error": str(e), "stage": e.stage, "step": e.step, "lr": e.lr}))
        kept = folders.publish_failed(staging, cfg.run_dir, lock)
        raise UserError(
            f"training stopped: {e}; the last good weights are in {kept / 'model'}; lower train.lr (it was {e.lr:g})"
        ) from None
    except BaseException:
        if not checkpoint.exists(staging):
            folders.discard_staging(staging, lock)
            raise
        lock.release()  # interrupted or failed after a checkpoint: it stays, for the same command to go on from
        progress.note(f"the run stopped; its last checkpoint is in {staging}: run the same command again to go on from it")
        raise
    checkpoint.remove(staging)  # the run is complete: a kill from here on costs at most the rename below
    folders.publish(staging, cfg.run_dir, lock)
    return Run(cfg.run_dir, cfg, metrics, task)


def _processes() -> PartialState:
    """This process's place among those `train --processes N` or `accelerate launch` started (alone: 0 of 1)."""
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _train_as_worker(setup: Setup, on_log, trial: bool) -> Run:
    """Every process runs the whole recipe, on its share of each batch (the same steps, in step);
    only the main one's folder is kept. The others build theirs in a temporary folder, deleted after."""
    staging = Path(tempfile.mkdtemp(prefix="transferkit-worker-"))
    try:
        _train_into(staging, setup, Progress(), on_log, trial)
    except Diverged:
        pass  # every process sees the same loss: the main one reports it and keeps the last good weights
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Run(setup.cfg.run_dir, setup.cfg, {}, setup.task, worker=True)


@dataclass
class Setup:
    """A run as far as it goes before anything is written: its config resolved, data read, model loaded."""

    cfg: RunConfig
    model: object
    task: object
    regime: object
    splits: Splits
    stages: list
    record: dict | None = None
    """The configuration and data (a hash) a checkpoint of this run belongs to; None: no checkpoints."""
    resumed: checkpoint.Resumed | None = None
    """The checkpoint the run goes on from."""


def prepare(config, overrides=None, progress: Progress | None = None, check_output: bool = True, resumable: bool = False) -> Setup:
    """Read the config and data, load the model, check that they fit and resolve the regime's defaults
    (config.yaml keeps the values used, whatever later defaults become). `resumable`: a run that takes
    checkpoints; finds the one to go on from (train.resume). Writes nothing."""
    progress = progress or Progress()
    cfg = config if isinstance(config, RunConfig) and not overrides else load_config(config, overrides)
    cfg = cfg.with_dataset_defaults()
    if check_output:
        folders.check_output(cfg.run_dir, cfg.overwrite)
    kind = kind_of(cfg.model)
    task = tasks.make(kind, cfg)
    regime = REGIMES[cfg.regime]
    check_fit(regime, kind, task, cfg.model.name, tasks.KIND_WORDS[kind], REGIMES)
    _check_mitigations(cfg, task)
    seed_everything(cfg.train.seed)
    splits = task.read(cfg.data, cfg.train.seed)
    model = load_model(cfg, task, progress.note)
    _check_data_fits(cfg, model, task, splits)
    if regime.cached_features and not model.can_split:
        raise UserError(model.why_no_split())
    if regime.cached_features and cfg.train.distributed == "fsdp" and _processes().num_processes > 1:
        raise UserError(f"train.distributed=fsdp shards a model that trains through its backbone, and {cfg.regime} trains a head on "
                        "features the backbone computed once; use train.distributed=ddp, or a regime such as full or lora")  # fmt: skip
    if regime.check_model:
        regime.check_model(cfg, model)
    cfg = resolve_defaults(replace(cfg, model=replace(cfg.model, max_length=getattr(model, "max_length", None))), len(splits.train))
    _warn_small_validation(splits.validation, task)
    stages = regime.stages(cfg)
    for stage in stages:
        micro = cfg.train.micro_batch_size or stage.batch_size
        if stage.batch_size % micro:
            raise UserError(f"batch size {stage.batch_size} is not a multiple of train.micro_batch_size ({micro}); change one")
    if cfg.train.lr == "suggested":
        _range_test_stage(cfg, stages)  # checks that there is a rate to find
    setup = Setup(cfg, model, task, regime, splits, stages)
    if resumable:
        setup.record = {"config": json.loads(json.dumps(cfg.to_dict(), default=str)), "data": checkpoint.fingerprint(splits)}
        staging = folders.staging_of(cfg.run_dir)
        setup.resumed = checkpoint.find(staging, setup.record["config"], setup.record["data"], cfg.train.resume)
        if setup.resumed:
            progress.note(f"resuming from the checkpoint at {setup.resumed.describe} in {staging}: it belongs to this same "
                          "configuration and data (pass --no-resume to start over)")  # fmt: skip
    return setup


SMALL_VALIDATION = 50  # fewer examples than this, and one of them moves a validation metric by over 2 points


def _warn_small_validation(validation, task) -> None:
    if len(validation) < SMALL_VALIDATION and task.head == "sequence":
        from .data.tables import warn

        warn(f"the validation split holds {len(validation)} examples: one of them moves its accuracy by {100 / max(len(validation), 1):.1f} "
             "points, so the checkpoint kept follows noise as much as quality; give more data or raise data.validation_fraction")  # fmt: skip


def _check_mitigations(cfg: RunConfig, task) -> None:
    """Replay and the general-text metric use the language-model loss: they need a task on a causal LM's own head."""
    metric = cfg.train.metric or task.metric
    if metric not in task.stopping_metrics:
        raise UserError(f"train.metric={metric} is not measured on validation by the {task.name} task here; "
                        f"use one of: {', '.join(task.stopping_metrics)}")  # fmt: skip
    if (cfg.replay.ratio or metric == "loss+general") and task.head != "lm":
        raise UserError("replay and metric loss+general use the language-model loss: they need a causal LM; unset replay.ratio")


SOLVERS = {"adam": fit, "lbfgs": fit_probe}  # a Stage's solver: the training loop, or a head fit on the cache

EXAMPLE_MODELS = {"text": "minilm-l6", "image": "efficientnet-lite0"}  # a built-in model for each kind of input


def _check_data_fits(cfg: RunConfig, model, task, splits: Splits) -> None:
    if model.modality != splits.modality:
        hint = EXAMPLE_MODELS[splits.modality]
        raise UserError(
            f"model '{cfg.model.name}' reads {model.modality}s but data '{cfg.data.name}' holds {splits.modality}s; "
            f"pick a {splits.modality} model, e.g. --model {hint}"
        )
    if splits.train.pairs is not None and not model.reads_pairs and not getattr(task, "joins_pairs", False):
        raise UserError(f"text pairs (data.pair_column) go to a text encoder as (text, text_pair); '{cfg.model.name}' takes single "
                        "inputs: use an encoder such as minilm-l6, or join the two texts into one column")  # fmt: skip
    if cfg.forgetting.corpus and not can_measure(model):
        raise UserError("forgetting is measured on general text: it needs a text model; unset forgetting.corpus")


def _train_into(staging: Path, setup: Setup, progress, on_log=None, trial: bool = False) -> tuple[dict, RunConfig]:
    """Every stage through the loop, then test and save; returns the final metrics and the config as run
    (with train.lr=suggested, the rate the range test found)."""
    cfg, model, task, regime, splits, stages = setup.cfg, setup.model, setup.task, setup.regime, setup.splits, setup.stages
    options = tracking.accelerator_options(cfg.train.report_to, staging)
    if _processes().num_processes > 1:
        # Parameters a head leaves unused (BERT's pooler under a token-tagging head) would stall DDP.
        options["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    accelerator = Accelerator(**options)
    precision = resolve_precision(cfg.train.precision, accelerator.device)
    ctx = tasks.Context(cfg, accelerator, precision, progress)
    model.to(accelerator.device)
    started = time.perf_counter()
    if regime.prepare:
        regime.prepare(model, task, splits, cfg)
    forgetting = None if trial else start_forgetting(cfg, model, accelerator, precision, progress)
    # Encoded once: token ids for text (padding happens per batch), transformed images for vision.
    # A search trial never touches the test split.
    notes: list[str] = []  # what encoding said (e.g. that the tokens came from the cache), kept in metrics.json
    note = lambda message: notes.append(message) or progress.note(message)  # noqa: E731
    names = ("train", "validation") if trial else ("train", "validation", "test")
    items = {name: task.encode(model, getattr(splits, name), train=name == "train", note=note) for name in names}
    range_test = None
    if cfg.train.lr == "suggested":
        range_test = _range_test(cfg, model, task, stages, items, ctx)
        cfg = replace(cfg, train=replace(cfg.train, lr=range_test.suggested))
        stages = regime.stages(cfg)
        progress.note(f"lr range test: train.lr={range_test.suggested:.3g}")
    folders.write_text(staging / "config.yaml", f"{folders.CONFIG_HEADER}\n# every value as this run used it: rerun with transferkit train THIS_FILE\n"
                       + yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))  # fmt: skip
    trackers = tracking.Trackers(accelerator, cfg)  # train.report_to: nothing when none
    if cfg.replay.ratio:
        items["train"] = list(items["train"]) + replay_items(cfg, model, len(items["train"]))
    hooks = Hooks(progress=progress)
    if (cfg.train.metric or task.metric) == "loss+general":
        hooks.extra_validation = general_validation(cfg, model, accelerator, precision)
    features, summary = None, {"stages": []}
    # Sharded (fsdp) for training only: the test and the saved folder use the weights gathered back.
    shard = cfg.train.distributed == "fsdp" and accelerator.num_processes > 1
    held = 1.0  # the share of the weights this process holds while training
    resumed, t = setup.resumed, cfg.train
    checkpoints = (checkpoint.RunCheckpoints(staging, setup.record["config"], setup.record["data"], len(stages), t.checkpoint_every_steps,
                                             t.checkpoint_minutes, resumed) if setup.record else checkpoint.NoCheckpoints(staging))  # fmt: skip

    def cached_features() -> tuple[dict, float]:
        """The frozen backbone's features: from the checkpoint when a resumed run has them, else computed (and kept)."""
        stored = checkpoints.features()
        if stored is not None:
            return stored, summary.get("cache_seconds", 0.0)
        computed, seconds = _cache_features(model, items, ctx)
        checkpoints.save_features(computed)
        return computed, seconds

    with _open_log(staging / "metrics.jsonl", resumed) as log_file:
        def log(record: dict) -> None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()  # a run followed live (tail -f, a search's pruner) sees each step as it ends

        fed = trackers.feed(log)

        def log_and_watch(record: dict) -> None:
            fed(record)
            on_log(record)

        hooks.log, hooks.checkpoints, checkpoints.log_file = (log_and_watch if on_log else fed), checkpoints, log_file
        if resumed:
            summary = resumed.state["summary"]
        try:
            for index, stage in enumerate(stages):
                stage.apply(model)  # every stage's, in order, finished or not: the model's structure as it was
                if shard and not sharding.is_sharded(model):
                    held = sharding.shard(model)  # after apply: the adapters a stage adds are sharded with the rest
                if resumed and index < resumed.stage:
                    continue  # finished before the interruption: its weights are in the checkpoint
                if resumed and index == resumed.stage:
                    checkpoints.restore_weights(model)
                computed = stage.cached and features is None
                if computed:
                    features, summary["cache_seconds"] = cached_features()
                trainee, data = (HeadOnFeatures(model), features) if stage.cached else (model, items)
                micro = cfg.train.micro_batch_size or stage.batch_size
                train_loader = make_loader(data["train"], micro, True, cfg.train.seed, model.pad_id)
                solve = SOLVERS[stage.solver]
                checkpoints.begin_stage(index, model, summary)
                checkpoints.stage_ready(worth_saving=index > 0 or computed)
                result = solve(trainee, train_loader, eval_loader(data["validation"], model), task, accelerator, stage, cfg.train, precision, hooks)
                summary["stages"].append(_stage_summary(stage, result, trainee, _ceiling(precision, accelerator)))
        except Diverged:  # every process sees the same loss, so all of them gather together
            _gathered(setup, model, accelerator.device)
            raise
        model = _gathered(setup, model, accelerator.device)
        if resumed and resumed.stage >= len(stages):  # every stage had finished: the test is what was left
            checkpoints.restore_weights(model)
        elif stages:
            checkpoints.training_done()
        checkpoints.testing()
    # The test set goes through the same path as training did last: the cache for a head-only
    # regime (so the backbone still runs only once), the whole model otherwise.
    if stages and stages[-1].cached and features is None:
        features, _ = cached_features()
    final_model, final_items = (HeadOnFeatures(model), features) if stages and stages[-1].cached else (model, items)
    chosen = task.after_training(final_model, final_items["validation"], ctx)
    train_seconds = time.perf_counter() - started
    if trial:
        # What a search ranks trials by: the validation split, scored as the test split would be.
        validation, _ = task.test(final_model, splits.validation, final_items["validation"], ctx)
        metrics = {"regime": cfg.regime, "task": task.name, "trial": True, "validation": validation, "test": {},
                   "train_seconds": train_seconds, "headlines": list(task.headlines), "columns": task.columns,
                   **({"chosen_on_validation": chosen} if chosen else {}), **summary}  # fmt: skip
        folders.write_text(staging / "metrics.json", json.dumps(metrics, indent=2))
        trackers.finish(metrics)
        return metrics, cfg
    test, extra = task.test(final_model, splits.test, final_items["test"], ctx)
    if forgetting is not None:
        extra["forgetting"] = forgetting.measure(model)
    if range_test is not None:
        extra["lr_range_test"] = range_test.to_dict()
    folders.save_model(_Saved(model, task), staging / "model")
    metrics = {
        "regime": cfg.regime,
        "task": task.name,
        "model": cfg.model.name,
        "data": {
            "name": cfg.data.name,
            **{n: len(getattr(splits, n)) for n in ("train", "validation", "test")},
            "fingerprint": setup.record["data"] if setup.record else None,  # a hash of every split's inputs and targets
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
        "processes": {"count": accelerator.num_processes, "distributed": cfg.train.distributed if accelerator.num_processes > 1 else None,
                      "weights_held": held},
        "model_size_mb": folders.folder_size(staging / "model") / 2**20,
        # What checkpointing cost this process (a resumed run: since it resumed).
        "checkpoints": {"written": checkpoints.written, "seconds": checkpoints.seconds, "resumed_from": resumed.describe if resumed else None}
        if setup.record else None,
        **({"chosen_on_validation": chosen} if chosen else {}),
        **summary,
        **extra,
    }
    folders.write_text(staging / "metrics.json", json.dumps(metrics, indent=2))
    folders.write_text(staging / "report.html", run_report(metrics, read_log(staging), (staging / "config.yaml").read_text()))
    card.write_model_card(staging, cfg, metrics)
    trackers.finish(metrics)
    return metrics, cfg


def _gathered(setup: Setup, model, device):
    """A sharded model's weights (trained, or its best before a divergence) gathered back whole into a
    plain copy, built as the run built its own (the stages' adapters added), which becomes the run's
    model; an unsharded model as it is."""
    if not sharding.is_sharded(model):
        return model
    fresh = load_model(setup.cfg, setup.task, lambda message: None)
    fresh.to(device)
    for stage in setup.stages:
        stage.apply(fresh)
    setup.model = sharding.unsharded(model, fresh)
    return setup.model


def _same_finished_run(setup: Setup) -> Run | None:
    run_dir = setup.cfg.run_dir
    if not folders.is_finished(run_dir) or not folders.is_run(run_dir):
        return None
    try:
        then = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if checkpoint.differences(then, setup.record["config"]) or metrics.get("data", {}).get("fingerprint") != setup.record["data"]:
        return None
    return Run(run_dir, setup.cfg, metrics, setup.task, reused=True)


def _open_log(path: Path, resumed):
    """metrics.jsonl: new, or for a resumed run cut back to where its checkpoint was taken (the steps
    after it are trained again and logged again)."""
    if resumed is None:
        return open(path, "w")
    log = open(path, "r+")
    log.seek(resumed.state["log_bytes"])
    log.truncate()
    return log


class _Saved:
    """What `folders.save_model` writes: the model's own folder, then the task's task.json in it."""

    def __init__(self, model, task):
        self.model, self.task = model, task

    def save(self, folder: Path) -> None:
        self.task.before_save(self.model)
        self.model.save(folder)
        tasks.write_task_file(self.task, folder)


def _range_test_stage(cfg: RunConfig, stages: list):
    """The stage whose rate is train.lr (the last: the only one, or staged's every-layer stage)."""
    stage = stages[-1] if stages else None
    if stage is None or stage.solver != "adam":
        how = "no learning rate to find" if stage is None else "its head is fit to convergence by L-BFGS (no learning rate)"
        raise UserError(f"train.lr=suggested: regime {cfg.regime} has {how}; give train.lr a number"
                        + (f" and {cfg.regime}.solver=adam" if stage is not None else ""))  # fmt: skip
    return stage


def _range_test(cfg: RunConfig, model, task, stages: list, items: dict, ctx):
    """The LR range test on the stage whose rate is train.lr, its parameters as that stage trains them;
    the weights are put back as they were. (Earlier stages have not run: staged's every-layer stage is
    tested from the untrained head.)"""
    from .training.lr_find import range_test

    stage = _range_test_stage(cfg, stages)
    stage.apply(model)
    data = _cache_features(model, items, ctx)[0] if stage.cached else items
    trainee = HeadOnFeatures(model) if stage.cached else model
    micro = cfg.train.micro_batch_size or stage.batch_size
    loader = make_loader(data["train"], micro, True, cfg.train.seed, model.pad_id)
    result = range_test(trainee, loader, task, ctx.accelerator, stage, cfg.train, ctx.precision, progress=ctx.progress)
    if result.suggested is None:
        raise UserError(f"the lr range test could not suggest a rate ({len(result.lrs)} steps ran: too little training data, "
                        "a loss that never fell, or one that diverged at once); give train.lr a number")  # fmt: skip
    return result


def find_lr(config, overrides=None, progress: Progress | None = None, output: str | Path | None = None):
    """`transferkit lr-find`: the range test for `config`'s regime on its training split; nothing is
    trained for good. Writes `output` (lr_find.json, report.html with the plot, config.yaml) when given.
    Returns (RangeTest, the resolved config)."""
    progress = progress or Progress()
    if output is not None:
        folders.check_output(Path(output), (config.overwrite if isinstance(config, RunConfig) else False), kind="lr-find")
    setup = prepare(config, overrides, progress, check_output=False)
    cfg, model, task = setup.cfg, setup.model, setup.task
    _range_test_stage(cfg, setup.stages)
    accelerator = Accelerator()
    precision = resolve_precision(cfg.train.precision, accelerator.device)
    ctx = tasks.Context(cfg, accelerator, precision, progress)
    model.to(accelerator.device)
    if setup.regime.prepare:
        setup.regime.prepare(model, task, setup.splits, cfg)
    items = {"train": task.encode(model, setup.splits.train, train=True)}
    result = _range_test(cfg, model, task, setup.stages, items, ctx)
    if output is not None:
        from .report.html import range_test_report

        output = Path(output)
        staging, lock = folders.start_staging(output)
        try:
            config_text = f"{folders.CONFIG_HEADER}\n# the configuration the range test ran; train.lr is what it suggests\n" + yaml.safe_dump(
                replace(cfg, train=replace(cfg.train, lr=result.suggested)).to_dict(), sort_keys=False, allow_unicode=True)
            folders.write_text(staging / "config.yaml", config_text)
            folders.write_text(staging / "lr_find.json", json.dumps(result.to_dict(), indent=2))
            folders.write_text(staging / "report.html", range_test_report(result.to_dict(), config_text))
        except BaseException:
            folders.discard_staging(staging, lock)
            raise
        folders.publish(staging, output, lock, kind="lr-find")
    return result, cfg


def _cache_features(model, items: dict, ctx) -> tuple[dict, float]:
    """The frozen backbone's features of every split, computed once."""
    started = time.perf_counter()
    loaders = {n: eval_loader(split, model) for n, split in items.items()}
    ctx.progress.start("caching features", sum(len(loader) for loader in loaders.values()))
    features = {n: cache_features(model, loader, ctx.accelerator, ctx.precision, ctx.progress) for n, loader in loaders.items()}
    ctx.progress.close()
    return features, time.perf_counter() - started


def _ceiling(precision: str, accelerator) -> dict | None:
    from .training.throughput import ceiling

    try:
        return ceiling(precision, accelerator.device.type)
    except Exception:  # noqa: BLE001  (a figure for the record: never a reason for a run to fail)
        return None


def _stage_summary(stage, result, trainee, ceiling: dict | None) -> dict:
    from .training.throughput import model_flops

    looped = result.solver == "adam" and result.tokens
    flops_per_second = model_flops(trainee, result.tokens) / max(result.step_seconds, 1e-9) if looped else None
    return {
        "name": stage.name,
        "solver": result.solver,
        # An L-BFGS head has no rate or epochs: its steps are iterations, its examples full-batch passes.
        "lr": stage.lr if result.solver == "adam" else None,
        "epochs": stage.epochs if result.solver == "adam" else None,
        "steps": result.steps,
        "examples": result.examples,
        "seconds": result.seconds,
        "examples_per_second": result.examples / max(result.seconds, 1e-9),
        "tokens": result.tokens,
        "tokens_per_second": result.tokens / max(result.step_seconds, 1e-9) if looped else None,
        "step_seconds": result.step_seconds,
        # Model FLOPs per second over the machine's matmul ceiling (training/throughput.py says how both are counted).
        "model_gflops_per_second": flops_per_second / 1e9 if flops_per_second else None,
        "ceiling": ceiling,
        # Every process counts the whole step's tokens; each has its own ceiling (its threads, its GPU).
        "ceiling_share": flops_per_second / 1e9 / (ceiling["gflops"] * _processes().num_processes) if flops_per_second and ceiling else None,
        "stopped_early": result.stopped_early,
        "best_step": result.best_step,
        "best_validation": {k: v for k, v in result.best_metrics.items() if isinstance(v, float)},
        "trainable_parameters": sum(p.numel() for p in trainee.parameters() if p.requires_grad),
    }


def _parameter_counts(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_percent": 100 * trainable / total}
