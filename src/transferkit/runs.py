"""A run: data in, a trained model and its measurements out, in one folder.

    runs/<name>/
        config.yaml      the resolved configuration (every default filled in)
        metrics.jsonl    one JSON line per optimizer step (validation metrics where it validated)
        metrics.json     final test metrics and costs; its presence marks the run as finished
        model/           a Hugging Face model folder, or a PEFT adapter folder with the head
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

from . import card, folders, tracking
from .config import RunConfig, load_config
from .data.batching import make_loader
from .data.splits import Splits, load_generation_splits, load_splits
from .errors import UserError
from .eval.causal import test_causal
from .methods import CAUSAL_ONLY, HEAD_ONLY, METHODS, resolve_defaults
from .models import load_model
from .models.causal import CausalLM
from .tasks import Classification, LanguageModeling
from .training.features import HeadOnFeatures, cache_features
from .training.loop import Diverged, Progress, evaluate, fit


@dataclass
class Run:
    """A finished run: where it lives and what it measured."""

    dir: Path
    config: RunConfig
    metrics: dict

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
    progress = progress or Progress()
    run_dir = cfg.run_dir
    folders.check_output(run_dir, cfg.overwrite)
    cfg = resolve_defaults(cfg)  # config.yaml keeps the values used, whatever later defaults become
    seed_everything(cfg.train.seed)
    splits = load_generation_splits(cfg.data, cfg.train.seed) if cfg.task == "generate" else load_splits(cfg.data, cfg.train.seed)
    model = load_model(cfg, splits.label_names, progress.note)
    _check_fit(cfg, model, splits)
    cfg = replace(cfg, model=replace(cfg.model, max_length=getattr(model, "max_length", None)))  # as truncated
    stages = METHODS[cfg.regime].stages(cfg)
    for stage in stages:
        micro = cfg.train.micro_batch_size or stage.batch_size
        if stage.batch_size % micro:
            raise UserError(f"batch size {stage.batch_size} is not a multiple of train.micro_batch_size ({micro}); change one")

    # Everything above only reads. The run is built in a staging folder and swapped in at the end.
    staging, lock = folders.start_staging(run_dir)
    try:
        metrics = _train_into(staging, cfg, model, splits, stages, progress)
    except Diverged as e:
        folders.save_model(model, staging / "model")
        folders.write_text(staging / "failure.json", json.dumps({"error": str(e), "stage": e.stage, "step": e.step, "lr": e.lr}))
        kept = folders.publish_failed(staging, run_dir, lock)
        raise UserError(
            f"training stopped: {e}; the last good weights are in {kept / 'model'}; lower train.lr (it was {e.lr:g})"
        ) from None
    except BaseException:
        folders.discard_staging(staging, lock)
        raise
    folders.publish(staging, run_dir, lock)
    return Run(run_dir, cfg, metrics)


def _check_fit(cfg: RunConfig, model, splits: Splits) -> None:
    """Model, data, task and regime go together, or a one-line error says what to change."""
    if model.modality != splits.modality:
        hint = "efficientnet-lite0" if splits.modality == "image" else "minilm-l6"
        raise UserError(
            f"model '{cfg.model.name}' reads {model.modality}s but data '{cfg.data.name}' holds {splits.modality}s; "
            f"pick a {splits.modality} model, e.g. --model {hint}"
        )
    causal = isinstance(model, CausalLM)
    if cfg.regime in CAUSAL_ONLY and not causal:
        raise UserError(f"regime {cfg.regime} prompts a causal language model; '{cfg.model.name}' is not one (try --model smollm2-135m)")
    if cfg.regime in HEAD_ONLY and causal:
        raise UserError(f"regime {cfg.regime} trains a new head on cached features; a causal LM answers with its own: use full, lora, prompt or icl")
    if (cfg.replay.ratio or cfg.train.metric == "loss+general") and not causal:
        raise UserError("replay and metric loss+general use the language-model loss: they need a causal LM; unset replay.ratio")
    if cfg.regime == "lora":
        from .methods.lora import check_targets

        check_targets(cfg.lora, model)
    if cfg.forgetting.corpus and model.modality != "text":
        raise UserError("forgetting is measured on general text: it needs a text model; unset forgetting.corpus")


def _train_into(staging: Path, cfg: RunConfig, model, splits: Splits, stages, progress) -> dict:
    """Run every stage through the loop, test, save; returns the final metrics."""
    folders.write_text(staging / "config.yaml", f"{folders.CONFIG_HEADER}\n# every value as this run used it: rerun with transferkit train THIS_FILE\n"
                       + yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
    causal = isinstance(model, CausalLM)
    task = LanguageModeling() if causal else Classification(splits.label_names)
    train_cfg = cfg.train
    if causal and train_cfg.metric in ("accuracy", "macro_f1"):
        train_cfg = replace(train_cfg, metric="loss")  # a causal LM validates by its loss on the answers
    accelerator = Accelerator(**tracking.accelerator_options(cfg.train.report_to, staging))
    trackers = tracking.Trackers(accelerator, cfg)  # train.report_to: nothing when none
    precision = resolve_precision(cfg.train.precision, accelerator.device)
    model.to(accelerator.device)
    pad_id = model.pad_id
    started = time.perf_counter()
    if cfg.regime == "icl":
        _choose_demonstrations(cfg, model, splits)
    forgetting = _start_forgetting(cfg, model, accelerator, precision, progress)
    # Encoded once: token ids for text (padding happens per batch), transformed images for vision.
    notes: list[str] = []  # what encoding said (e.g. that the tokens came from the cache), kept in metrics.json
    note = lambda message: notes.append(message) or progress.note(message)  # noqa: E731
    tokens = {name: model.encode(getattr(splits, name), train=name == "train", note=note) for name in ("train", "validation", "test")}
    if cfg.replay.ratio:
        tokens["train"] = tokens["train"] + _replay_items(cfg, model, len(tokens["train"]))
    extra_validation = _general_validation(cfg, model, accelerator, precision) if train_cfg.metric == "loss+general" else None
    features, summary = None, {"stages": []}
    with open(staging / "metrics.jsonl", "w") as log_file:
        log = lambda record: log_file.write(json.dumps(record) + "\n") or log_file.flush()  # noqa: E731
        log = trackers.feed(log)
        for stage in stages:
            stage.apply(model)
            if stage.cached and features is None:
                cache_started = time.perf_counter()
                loaders = {n: _eval_loader(items, pad_id) for n, items in tokens.items()}
                progress.start("caching features", sum(len(loader) for loader in loaders.values()))
                features = {n: cache_features(model, loader, accelerator, precision, progress) for n, loader in loaders.items()}
                progress.close()
                summary["cache_seconds"] = time.perf_counter() - cache_started
            trainee, items = (HeadOnFeatures(model), features) if stage.cached else (model, tokens)
            micro = cfg.train.micro_batch_size or stage.batch_size
            result = fit(
                trainee,
                make_loader(items["train"], micro, True, cfg.train.seed, pad_id),
                _eval_loader(items["validation"], pad_id),
                task,
                accelerator,
                cfg=train_cfg,
                lr=stage.lr,
                epochs=stage.epochs,
                max_steps=stage.max_steps,
                accumulation=stage.batch_size // micro,
                precision=precision,
                layer_decay=stage.layer_decay,
                stage=stage.name,
                log=log,
                progress=progress,
                extra_validation=extra_validation,
            )
            summary["stages"].append(_stage_summary(stage, result, trainee))
    train_seconds = time.perf_counter() - started

    if causal:
        test, extra = test_causal(model, splits.test, cfg, accelerator, progress)
    else:
        # The test set goes through the same path as training did last: the cache for a
        # head-only regime (so the backbone still runs only once), the whole model otherwise.
        final_model, final_items = (HeadOnFeatures(model), features) if stages[-1].cached else (model, tokens)
        test, extra = evaluate(final_model, _eval_loader(final_items["test"], pad_id), task, accelerator, "fp32"), {}
    if forgetting is not None:
        extra["forgetting"] = forgetting.measure(model)
    folders.save_model(model, staging / "model")
    metrics = {
        "regime": cfg.regime,
        "task": cfg.task,
        "model": cfg.model.name,
        "data": {
            "name": cfg.data.name,
            **{n: len(getattr(splits, n)) for n in ("train", "validation", "test")},
            "skipped_files": splits.skipped,
            "notes": notes,
        },
        "labels": splits.label_names,
        "test": test,
        "validation": summary["stages"][-1]["best_validation"] if summary["stages"] else {},
        "parameters": _parameter_counts(model),
        "train_seconds": train_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if accelerator.device.type == "cuda" else None,
        "precision": precision,
        "model_size_mb": folders.folder_size(staging / "model") / 2**20,
        **summary,
        **extra,
    }
    folders.write_text(staging / "metrics.json", json.dumps(metrics, indent=2))
    from .report.html import run_report

    folders.write_text(staging / "report.html", run_report(staging))
    card.write_model_card(staging, cfg, metrics)
    trackers.finish(metrics)
    return metrics


def _choose_demonstrations(cfg: RunConfig, model: CausalLM, splits: Splits) -> None:
    """The icl regime's demonstrations, from the training split; nothing trains."""
    from .methods.icl import choose_demonstrations

    model.trained = False
    model.requires_grad_(False)
    if cfg.task == "generate":
        # Demonstrations are earlier chat turns (prompt, then the reference response).
        chats = [x["messages"] for x in splits.train.inputs if "messages" in x]
        if cfg.icl.k is None or cfg.icl.k > len(chats):
            raise UserError(f"icl.shots={cfg.icl.shots} for generation must be a number up to the {len(chats)} "
                            "prompt/response examples in training; lower it")  # fmt: skip
        model.chat_demos = chats[: cfg.icl.k]  # the training split is already in a seeded order
        return
    index = {name: i for i, name in enumerate(model.label_names)}
    texts, labels = splits.train.inputs, splits.train.labels
    room = model.context_length - max(len(model.prompt.query_ids(model.tokenizer, t, model.max_length)) for t in splits.test.inputs)
    room -= max(len(a) for a in model.prompt.answer_ids(model.tokenizer))

    def fits(chosen: list[int]) -> bool:
        model.demos = [(texts[i], index[labels[i]]) for i in chosen]
        return len(model.prefix_ids()) <= room

    chosen = choose_demonstrations(labels, cfg.icl.k, cfg.train.seed, fits)
    model.demos = [(texts[i], index[labels[i]]) for i in chosen]
    if len(model.prefix_ids()) > room:
        raise UserError(f"{len(chosen)} demonstrations do not fit in the model's context ({model.context_length} tokens); "
                        "lower icl.shots or model.max_length, or use icl.shots=max")  # fmt: skip


def _start_forgetting(cfg: RunConfig, model, accelerator, precision: str, progress):
    """Measure general ability before any stage changes the model; None without forgetting.corpus."""
    if not cfg.forgetting.corpus:
        return None
    from .eval.forgetting import CausalForgetting, EncoderForgetting, probe_splits

    progress.note(f"measuring general ability on {cfg.forgetting.corpus} before training")
    if isinstance(model, CausalLM):
        return CausalForgetting(model, cfg, accelerator, precision)
    return EncoderForgetting(model, cfg, accelerator, probe_splits(cfg))


def _replay_items(cfg: RunConfig, model: CausalLM, n_task: int) -> list[dict]:
    """General-text blocks to mix into training: `ratio` of the mixed training set."""
    from .data.corpus import general_parts, read_passages
    from .eval.forgetting import text_blocks

    corpus = cfg.replay.corpus or cfg.forgetting.corpus
    # Replaying the forgetting corpus uses its other half: forgetting is never measured on replayed text.
    replay = general_parts(corpus)[1] if corpus == cfg.forgetting.corpus else read_passages(corpus)
    wanted = max(1, round(cfg.replay.ratio / (1 - cfg.replay.ratio) * n_task))
    blocks = text_blocks(model, replay, wanted * model.max_length)
    if not blocks:
        raise UserError(f"replay corpus '{corpus}' holds no text to replay; give a larger corpus")
    return [blocks[i % len(blocks)] for i in range(wanted)]


def _general_validation(cfg: RunConfig, model: CausalLM, accelerator, precision: str):
    """For metric loss+general: the loss on a small held-out slice of general text, at each validation."""
    from .data.corpus import general_parts
    from .eval.forgetting import language_model_metrics, text_blocks

    held_out, _ = general_parts(cfg.forgetting.corpus)
    items = text_blocks(model, held_out[::-1], min(cfg.forgetting.tokens, 16 * model.max_length))
    return lambda _: {"general_loss": language_model_metrics(model, items, accelerator, precision)["loss"]}


def _eval_loader(items: list[dict], pad_id: int):
    # Larger than training batches: evaluation keeps no activations for a backward pass.
    return make_loader(items, 64, shuffle=False, seed=0, pad_id=pad_id)


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
        "best_validation": {k: v for k, v in result.best_metrics.items() if k in ("loss", "accuracy", "macro_f1")},
        "trainable_parameters": sum(p.numel() for p in trainee.parameters() if p.requires_grad),
    }


def _parameter_counts(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_percent": 100 * trainable / total}
