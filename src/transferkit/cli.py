"""The `transferkit` command: subcommands as a dict of functions.

Library code never prints; this module owns progress bars, tables and error messages.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

from .config import QAConfig
from .errors import UserError

EXAMPLES = {
    "train": """examples:
  transferkit train                                          # built-in default: minilm-l6 on bbc-news, full fine-tuning
  transferkit train configs/bbc-news/lora.yaml train.lr=3e-4 # a YAML config plus dotted overrides
  transferkit train --model ./my-bert --data reviews.csv --text-column review --label-column stars \\
                    --regime freeze --output runs/reviews
  transferkit train configs/smollm2/sft-lora.yaml            # instruction fine-tuning of a causal LM with LoRA
  transferkit train --model smollm2-135m --data tweet-sentiment --regime icl --shots 8 --calibrate
  transferkit train --model smollm2-135m --data notes.jsonl --task generate --regime full \\
                    train.max_steps=200 forgetting.corpus=bbc-news-text replay.ratio=0.2""",
    "evaluate": """examples:
  transferkit evaluate runs/reviews                          # the metrics measured at the end of training
  transferkit evaluate runs/reviews --data held-out.csv --json""",
    "predict": """examples:
  transferkit predict runs/reviews --input new.csv --output predictions.csv
  transferkit predict runs/reviews --text "Shares fell sharply after the results."
  transferkit predict runs/sft-lora --prompt "Summarise: ..."       # a generation run answers a prompt
  transferkit predict runs/photos --input photo.jpg                 # an image run: one image ...
  transferkit predict runs/photos --input new-photos/ --output predictions.csv   # ... or a folder""",
    "export": """examples:
  transferkit export runs/bbc-news-lora --format merged --output exports/bbc-news   # a plain transformers folder
  transferkit export runs/bbc-news-full --format onnx --output exports/bbc-news-onnx
Each export is checked on the run's test split before it is kept (the largest probability difference is printed).""",
    "models": "example:\n  transferkit models            # then: transferkit train --model minilm-l6 ...",
    "datasets": "example:\n  transferkit datasets          # then: transferkit train --data bbc-news ...",
    "tune": """examples:
  transferkit tune --data reviews.csv --regime lora --trials 20          # then: transferkit train runs/tune-reviews-lora/best.yaml
  transferkit tune --data bbc-news --regime lora --trials 20 --train-size 300 --minutes 20 --lr-find""",
    "lr-find": """examples:
  transferkit lr-find --data reviews.csv --regime lora     # prints the rate; the plot is in the report
  transferkit train --data reviews.csv --regime lora train.lr=suggested   # or let train run the test first""",
    "compare": """examples:
  transferkit compare configs/bbc-news/compare.yaml --regimes full,freeze,lora,prompt,staged,scratch
  transferkit compare --model minilm-l6 --data reviews.csv --train-sizes 32,128,512,all --seeds 3""",
    "plan": """examples:
  transferkit plan --model minilm-l6                         # full, freeze, lora and prompt side by side
  transferkit plan --model ./Llama-3-8B --regime lora --precision bf16 --batch 4 --seq 2048 --gpu-memory 24GiB
  transferkit plan --model minilm-l6 --data reviews.csv      # memory plus which regime fits this data
  transferkit plan --model ./big-model/config.json --examples 20 --classes 3 --gpu-memory 80G --json
  transferkit plan --model minilm-l6 --examples 300 --learning-curve runs/compare-reviews/compare.json
  transferkit plan --model ./Llama-3-70B --regime full --precision bf16 --task lm --processes 8 --sharding fsdp --gpu-memory 80G
--learning-curve reads an earlier comparison's compare.json, or results you measured, as JSON:
  {"results": [{"regime": "full", "train_size": 100, "accuracy": 0.81}, ...]}""",
}


def cmd_train(args) -> int | None:
    from .config import load_config
    from .report.text import BarProgress, format_forgetting
    from .runs import train

    if args.processes is not None and args.processes < 1:
        raise UserError(f"--processes must be 1 or more (got {args.processes})")
    if (args.processes or 1) > 1 and "LOCAL_RANK" not in os.environ:
        return launch(args.processes, args.argv)

    config_path, overrides = _split_config_args(args.config_and_overrides)
    flags = {
        "model.name": args.model,
        "data.name": args.data,
        "data.text_column": args.text_column,
        "data.label_column": args.label_column,
        "data.pair_column": args.pair_column,
        "data.validation": args.validation,
        "data.test": args.test,
        "regime": args.regime,
        "output": args.output,
        "train.epochs": args.epochs,
        "train.lr": args.lr,
        "train.seed": args.seed,
        "task.name": args.task,
        "icl.shots": args.shots,
    }
    flags = {k: v for k, v in flags.items() if v is not None}  # flag values are literal: never read as YAML
    if args.calibrate or args.calibrate_mode:
        flags["icl.calibrate"] = args.calibrate_mode or "auto"
    if args.overwrite:
        flags["overwrite"] = True
    if args.resume is not None:
        flags["train.resume"] = args.resume
    if args.trust_remote_code:
        flags["model.trust_remote_code"] = True
    cfg = load_config(config_path, overrides, flags)
    run = train(cfg, progress=BarProgress())
    if run.worker:
        return None  # the main process reports
    result, detail = run.task.describe(run.metrics["test"])
    where = ", ".join(filter(None, [detail, f"regime {cfg.regime}, {run.metrics['train_seconds']:.0f} s"]))
    print(f"{result}  ({where})")
    if run.metrics.get("forgetting"):
        print(format_forgetting(run.metrics["forgetting"]))
    print(f"run folder: {run.dir}  (model/, metrics.json, metrics.jsonl, config.yaml)")
    skipped = run.metrics["data"].get("skipped_files") or []
    if skipped:
        print(f"skipped {len(skipped)} files that are not images (listed in metrics.json), e.g. {skipped[0]}")


def cmd_evaluate(args) -> None:
    from .inference import check_run_dir, evaluate_file

    if args.data:
        metrics = evaluate_file(args.run, args.data, args.text_column, args.label_column, args.pair_column)
    else:
        path = check_run_dir(args.run) / "metrics.json"
        if not path.is_file():
            raise UserError(f"'{args.run}' holds no finished run (no metrics.json); pass --data to evaluate its model")
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))["test"]
        except (ValueError, KeyError, TypeError, OSError):
            raise UserError(f"'{path}' is damaged (not the JSON a finished run writes); evaluate the model anew with --data FILE") from None
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        from .report.text import format_metrics

        print(format_metrics(metrics))


def cmd_predict(args) -> None:
    from .data.outputs import check_output, write_predictions
    from .inference import generate_text, load_run, predict_columns

    if args.prompt is not None:
        if args.input is not None or args.text is not None:
            raise UserError("give one of --prompt, --input or --text")
        answer = generate_text(args.run, args.prompt, args.max_new_tokens, _device(args.device))
        print(json.dumps({"prompt": args.prompt, "answer": answer}, ensure_ascii=False) if args.json else answer)
        return
    if (args.input is None) == (args.text is None):
        raise UserError("give either --input FILE or --text 'some text' (or --prompt for a generation run)")
    if args.output is not None:
        if args.input is None:
            raise UserError("--output writes the rows of --input with their predictions; give --input FILE")
        check_output(Path(args.output), Path(args.input), args.overwrite)
    _check_batch_and_json(args)
    device = _device(args.device)
    model, cfg = load_run(args.run)
    model.to(device)
    inputs = model.read_inputs(args.input, args.text, args.text_column or cfg.data.text_column, args.pair,
                               args.pair_column or cfg.data.pair_column)
    new = predict_columns(model, cfg, inputs.examples, args.batch_size, detail=args.json)
    if args.json:
        rows = [{inputs.key: x, **{name: column[i] for name, column in new.items()}} for i, x in enumerate(inputs.raw)]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    new = {name: column for name, column in new.items() if name != "probabilities"}
    note = f" (skipped {len(inputs.skipped)} files that are not images)" if inputs.skipped else ""
    if args.output is None:
        for i, shown in enumerate(inputs.shown):
            print("\t".join(_cell(column[i]) for column in new.values()) + ("" if args.text is not None else f"\t{shown}"))
        if note:
            print(note.strip(" ()"), file=sys.stderr)
        return
    columns = new if inputs.table is not None else {"path": inputs.shown, **new}
    write_predictions(Path(args.output), inputs.table, columns)
    kept = "the input rows as they were, plus " if inputs.table is not None else "columns path, "
    print(f"wrote {len(inputs.shown)} predictions to {args.output} ({kept}{', '.join(new)}){note}")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)


def cmd_plan(args) -> None:
    from dataclasses import asdict, replace

    from .planning.advice import Facts, advise, read_curve
    from .planning.architecture import from_config, load_config
    from .planning.data import plan_task, summarise
    from .planning.fixes import cheapest_fix, lowest_memory
    from .planning.memory import REGIMES, Setup, parse_memory, plan
    from .report.plan import assumptions, devices_needed, format_advice, format_devices, format_plans

    budget = parse_memory(args.gpu_memory) if args.gpu_memory is not None else None
    task = plan_task(args.task, args.data)
    seq = args.seq or task.seq
    task.check(seq, args.stride)
    data = summarise(args, task, seq)
    curve = read_curve(args.learning_curve) if args.learning_curve else []
    if curve and data is None:
        raise UserError("--learning-curve needs the size of your data: pass --data or --examples")
    arch = from_config(load_config(args.model))
    targets = tuple(t.strip() for t in (args.lora_targets or "").split(",") if t.strip())
    setup = Setup(
        regime=args.regime or "full",
        precision=args.precision,
        optimizer=args.optimizer,
        batch_size=args.batch,
        seq_len=seq,
        gradient_checkpointing=args.gradient_checkpointing,
        lora_r=args.lora_r,
        lora_targets=targets,
        task=task.head,
        num_labels=args.labels or (data.labels if data else 2),
        device=args.device,
        examples=data.inputs if data else None,
        processes=args.processes,
        sharding=args.sharding,
    )
    plans = {r: plan(arch, replace(setup, regime=r)) for r in REGIMES}
    shown = {r: plans[r] for r in ([setup.regime] if args.regime else REGIMES)}
    fixes = {
        r: cheapest_fix(arch, p.setup, budget) or lowest_memory(arch, p.setup, budget)
        for r, p in shown.items()
        if budget is not None and p.possible and not p.fits(budget)
    }
    # The fewest FSDP processes on which each regime fits, as set up and with checkpointing.
    needed = {r: devices_needed(arch, r, p.setup, budget) for r, p in plans.items() if budget is not None and p.possible}
    spread = {r: f"{r} across devices: {format_devices(arch, r, shown[r].setup, budget, needed[r])}" for r in fixes}
    advice = None
    if data is not None:
        from .methods import REGIMES

        fewest = {r: None if found[0] is None else found[0].setup.processes for r, found in needed.items()}
        facts = Facts(
            data, arch.parameters(setup.task, setup.num_labels), arch.is_decoder, plans, budget, curve, tuple(REGIMES), fewest,
            not_for_task=task.unserved(REGIMES),
        )
        advice = advise(facts)
    if args.json:
        out = {
            "model": args.model,
            "architecture": asdict(arch),
            "budget_bytes": budget,
            "processes": setup.processes,
            "sharding": setup.sharding,
            "shards": setup.shards,
            "figures": "per device",
            "plans": {
                r: p.to_dict()
                | {"fits": None if budget is None else p.fits(budget)}
                | ({"fix": {"changes": fixes[r].changes, "fits": fixes[r].plan.fits(budget), "plan": fixes[r].plan.to_dict()}} if r in fixes else {})
                | ({"fewest_processes": _fewest_json(needed[r])} if r in needed else {})
                for r, p in shown.items()
            },
            "assumptions": assumptions(arch, setup),
            "data": None if data is None else asdict(data),
            "advice": None if advice is None else asdict(advice),
        }
        print(json.dumps(out, indent=2))
        return
    print(format_plans(shown, budget, fixes, spread))
    print("\nassumptions:")
    print("\n".join(f"  - {line}" for line in assumptions(arch, setup)))
    if advice is not None:
        print()
        print(format_advice(data, advice))


def _fewest_json(found) -> dict:
    """The fewest FSDP processes that fit, as set up and with gradient checkpointing (null: none do, or not asked)."""
    as_is, checkpointed = found
    return {
        "as_set_up": None if as_is is None else as_is.setup.processes,
        "peak_per_device": None if as_is is None else as_is.peak,
        "with_gradient_checkpointing": None if checkpointed is None else checkpointed.setup.processes,
    }


def _check_batch_and_json(args) -> None:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.json and args.output is not None:
        raise UserError("--json prints the predictions, --output writes them into a file (a .json one holds JSON); give one of them")


def _device(name: str | None):
    """The torch device --device names (default: the CPU), or a one-line error where it is not here."""
    import torch

    if name is None:
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device '{name}' is not a device; use cpu, cuda, cuda:1 or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {name}: no such CUDA GPU here ({torch.cuda.device_count()} visible); use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: no Apple GPU here; use --device cpu")
    return device


def cmd_compare(args) -> int:
    from .compare import compare
    from .config import load_config
    from .report.columns import headline_metric, text_table

    config_path, overrides = _split_config_args(args.config_and_overrides)
    flags = {"model.name": args.model, "data.name": args.data, "data.text_column": args.text_column,
             "data.label_column": args.label_column, "data.pair_column": args.pair_column, "task.name": args.task}
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.overwrite:
        flags["overwrite"] = True
    base = load_config(config_path, overrides, flags)
    sizes = [base.data.train_size] if args.train_sizes is None else [
        None if s.strip() == "all" else _positive_int(s, "--train-sizes") for s in args.train_sizes.split(",")
    ]
    seeds = list(range(_positive_int(args.seeds, "--seeds")))

    def on_run(i: int, n: int, row: dict) -> None:
        where = f"[{i}/{n}] {row['regime']:<8} train size {row['train_size']!s:<5} seed {row['seed']}"
        if "error" in row:
            print(f"{where}  failed: {row['error']}", flush=True)
        elif "seconds" in row:
            metric = headline_metric([row], row["headlines"])
            quality = f"{metric.replace('_', ' ')} {row[metric]:.4f}"
            print(f"{where}  {quality}  {row['seconds']:.0f} s  peak {row['peak_memory_mb']:.0f} MB", flush=True)
        else:
            print(f"{where}  running ...", flush=True)

    def on_trial(regime: str, row: dict) -> None:
        value = f"{row['value']:.4f}" if row["value"] is not None else "-"
        print(f"[tune {regime}] trial {row['number'] + 1}/{args.tune} {row['state']:<8} {value}", flush=True)

    tune_trials = None if args.tune is None else _positive_int(args.tune, "--tune")
    result = compare(base, [r.strip() for r in args.regimes.split(",")], sizes, seeds, args.output, on_run, bars=True,
                     tune_trials=tune_trials, on_trial=on_trial)  # fmt: skip
    print()
    print(text_table(result.summary, result.quality))
    for regime, values in result.tuned.items():
        print(f"tuned {regime}: " + (", ".join(f"{k}={v}" for k, v in values.items()) or "its defaults"))
    print(f"\ntable: {result.dir / 'compare.md'}  data: {result.dir / 'compare.json'}  report: {result.dir / 'report.html'}")
    failed = [row for row in result.rows if "error" in row]
    if failed:
        print(f"error: {len(failed)} of {len(result.rows)} runs failed (first: {failed[0]['regime']}: {printable(failed[0]['error'])}); "
              "the table and report hold the others", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _run_flags(args) -> dict:
    """The flags train, tune and lr-find share, as config keys (unset flags left out)."""
    flags = {"model.name": args.model, "data.name": args.data, "data.text_column": args.text_column,
             "data.label_column": args.label_column, "data.pair_column": args.pair_column, "task.name": args.task,
             "regime": args.regime, "train.seed": args.seed}  # fmt: skip
    flags = {k: v for k, v in flags.items() if v is not None}
    if getattr(args, "overwrite", False):
        flags["overwrite"] = True
    return flags


def cmd_tune(args) -> None:
    from .config import load_config
    from .report.text import BarProgress
    from .tune import tune

    config_path, overrides = _split_config_args(args.config_and_overrides)
    base = load_config(config_path, overrides, _run_flags(args))
    trials = None if args.trials == 0 else args.trials
    lr_centre = None
    if args.lr_find:
        from .runs import find_lr

        lr_centre = find_lr(base, progress=BarProgress())[0].suggested
        print(f"lr range test suggests {lr_centre:.3g}: the learning-rate range is centred there", flush=True)

    def on_trial(row: dict) -> None:
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
        value = f"{row['value']:.4f}" if row["value"] is not None else "-"
        why = f"  ({row['error']})" if row.get("error") else ""
        seconds = f"{row['seconds']:.0f} s" if row.get("seconds") is not None else ""
        print(f"[trial {row['number'] + 1}{'/' + str(trials) if trials else ''}] {row['state']:<8} {value:>7}  {seconds:>6}  {shown}{why}", flush=True)

    search = tune(base, trials, args.minutes, args.output, args.train_size, lr_centre, on_trial, progress=BarProgress())
    best = search.best
    print(f"\nbest: trial {best['number'] + 1}, validation {search.metric} {best['value']:.4f}")
    print(f"best settings: {search.dir / 'best.yaml'}  (transferkit train {search.dir / 'best.yaml'})")
    print(f"trials: {search.dir / 'tune.md'}  report: {search.dir / 'report.html'}")


def cmd_lr_find(args) -> None:
    from .config import load_config
    from .report.text import BarProgress
    from .runs import find_lr

    config_path, overrides = _split_config_args(args.config_and_overrides)
    base = load_config(config_path, overrides, _run_flags(args))
    output = args.output or str(Path("runs") / f"lr-find-{Path(base.data.name).stem}-{base.regime}")
    result, cfg = find_lr(base, progress=BarProgress(), output=output)
    print(f"suggested learning rate: {result.suggested:.3g}  (regime {cfg.regime}; {len(result.lrs)} steps, stopped: {result.stopped})")
    print(f"use it: transferkit train ... train.lr={result.suggested:.3g}   or let train find it: train.lr=suggested")
    print(f"plot: {Path(output) / 'report.html'}")


def cmd_export(args) -> None:
    from .export import export

    result = export(args.run, args.format, args.output, args.overwrite)
    c = result.check
    print(f"checked against the run on its {c.examples} {c.unit}: largest probability difference {c.max_difference:.2e}, "
          f"identical predictions {c.identical}/{c.examples} ({100 * c.identical_share:.2f}%)")  # fmt: skip
    print(f"exported {args.format} to {result.folder} (its README.md says how to load it)")


def _positive_int(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{flag} takes positive whole numbers (got '{text}')")
    return value


def cmd_models(args) -> None:
    from .assets import MODELS

    _print_assets(MODELS)


def cmd_datasets(args) -> None:
    from .assets import CORPORA, DATASETS

    _print_assets(DATASETS)
    print("\nunlabelled text (forgetting.corpus, replay.corpus, or --task generate):")
    _print_assets(CORPORA)


COMMANDS = {
    "train": (cmd_train, "fine-tune a pre-trained model on your data"),
    "evaluate": (cmd_evaluate, "metrics of a finished run, on its test split or on new labelled data"),
    "predict": (cmd_predict, "label new texts or images, or answer a prompt, with a finished run's model"),
    "compare": (cmd_compare, "run several regimes on the same data and split, and measure what each costs and gives"),
    "plan": (cmd_plan, "memory of each regime from the model's config alone, and which regime suits your data"),
    "tune": (cmd_tune, "search a regime's hyperparameters on the validation split (Optuna), and write the best as a config"),
    "lr-find": (cmd_lr_find, "the learning-rate range test: a short run with a rising rate, and the rate it suggests"),
    "export": (cmd_export, "write a run's model as a merged plain folder or ONNX, checked against the run's predictions"),
    "models": (cmd_models, "list the built-in models and whether each is installed"),
    "datasets": (cmd_datasets, "list the built-in datasets and whether each is installed"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="transferkit",
        allow_abbrev=False,
        description="Adapt a pre-trained model to your task and data, and see what each regime costs and keeps.",
        epilog="examples:\n  transferkit train\n  transferkit train --data reviews.csv --regime lora\n"
        "  transferkit predict runs/bbc-news-full --text 'Shares fell sharply.'\n"
        "run 'transferkit COMMAND --help' for each command's options",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parsers = {
        name: sub.add_parser(
            name, help=help_, description=help_, allow_abbrev=False, epilog=EXAMPLES.get(name), formatter_class=argparse.RawDescriptionHelpFormatter
        )
        for name, (_, help_) in COMMANDS.items()
    }
    p = parsers["train"]
    p.add_argument("config_and_overrides", nargs="*", metavar="[CONFIG.yaml] [section.key=value ...]",
                   help="an optional YAML config, then overrides such as train.lr=3e-4 lora.r=8")
    p.add_argument("--model", help="built-in model name (see 'transferkit models'), a local Hugging Face model folder, "
                   "a saved image model folder, or a weights file with model.architecture=NAME")
    p.add_argument("--data", help="built-in dataset name (see 'transferkit datasets'), a CSV / JSONL file, "
                   "or an image folder with one sub-folder per class")
    p.add_argument("--text-column", help="column with the input text (default: text)")
    p.add_argument("--label-column", help="column with the label, the regression target, or the labels of a multi-label "
                   "row (default: label)")
    p.add_argument("--pair-column", help="column with the second text of a text pair (inference, paraphrase, similarity)")
    p.add_argument("--validation", help="a separate validation file (default: split off the data)")
    p.add_argument("--test", help="a separate test file (default: split off the data)")
    p.add_argument("--regime", help="full, freeze, lora, prompt, staged, scratch, or icl (causal LMs: in-context "
                   "learning, no training) (default: full)")
    p.add_argument("--task", help="classify, regress (numeric targets), multilabel (any number of labels per input), "
                   "generate (a causal LM learns responses or plain text), tokens (a tag per word: named entities) or qa "
                   "(extractive question answering) (default: a built-in dataset's own, else classify)")
    p.add_argument("--shots", help="icl: demonstrations in the prompt, a number or max (default: 8)")
    p.add_argument("--calibrate", action="store_true", help="causal-LM classification: calibrate the label scores, with the mode "
                   "(contextual, domain or batch) that scores best on the validation split")
    p.add_argument("--calibrate-mode", choices=["none", "contextual", "domain", "batch", "auto"],
                   help="causal-LM classification: calibrate the label scores this way (--calibrate: auto)")
    p.add_argument("--epochs", type=int, help="passes over the training data (default: the regime's own)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the regime's own)")
    p.add_argument("--seed", type=int, help="seed for the split, the initialisation and the batch order (default: 0)")
    p.add_argument("--output", help="run folder (default: runs/<data>-<regime>)")
    p.add_argument("--overwrite", action="store_true", help="replace a run folder that already holds a finished run")
    p.add_argument("--processes", type=int, help="train as this many processes, data-parallel (DDP through accelerate: gloo "
                   "on CPUs, NCCL on GPUs; fully sharded with train.distributed=fsdp), with the same global batch and data order as one; or start the command "
                   "with accelerate launch -m transferkit train ... yourself")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_const", const="always", help="go on from the checkpoint an interrupted run "
                        "of this configuration left in <output>.partial (the default does so too when there is one; this "
                        "makes it an error when there is none)")
    resume.add_argument("--no-resume", dest="resume", action="store_const", const="never",
                        help="start over, discarding the checkpoint an interrupted run left")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped inside the model folder")

    p = parsers["compare"]
    p.add_argument("config_and_overrides", nargs="*", metavar="[CONFIG.yaml] [section.key=value ...]",
                   help="the base configuration every regime shares, then overrides")
    p.add_argument("--regimes", default="full,freeze,lora,prompt,staged,scratch", help="comma-separated regimes (default: all)")
    p.add_argument("--train-sizes", help="comma-separated training-set sizes, 'all' for the whole split "
                   "(default: the config's data.train_size, else all)")
    p.add_argument("--seeds", default="1", help="runs per regime and size, with seeds 0, 1, ... (default: 1)")
    p.add_argument("--tune", help="first tune each regime with this many trials (transferkit tune), and compare them at "
                   "their best settings rather than their defaults")
    _add_model_and_data(p)
    p.add_argument("--output", help="folder for the runs, the table and the report (default: runs/compare-<data>)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished comparison in that folder")

    for name in ("tune", "lr-find"):
        p = parsers[name]
        p.add_argument("config_and_overrides", nargs="*", metavar="[CONFIG.yaml] [section.key=value ...]",
                       help="the base configuration, then overrides, as for train")
        _add_model_and_data(p)
        p.add_argument("--regime", help="the regime to search / test (default: full)")
        p.add_argument("--seed", type=int, help="seed of the split, the runs and the sampler (default: 0)")
        p.add_argument("--overwrite", action="store_true", help="replace an earlier result in --output")
    p = parsers["tune"]
    p.add_argument("--trials", type=int, default=20, help="how many trials (default: 20; 0: as many as --minutes allows)")
    p.add_argument("--minutes", type=float, help="stop starting trials after this many minutes")
    p.add_argument("--train-size", type=int, help="trials train on this many examples (a stratified subset) to go faster; "
                   "validation is always the whole validation split")
    p.add_argument("--lr-find", action="store_true", help="run the lr range test first and centre the learning-rate range on its suggestion")
    p.add_argument("--output", help="the search folder (default: runs/tune-<data>-<regime>)")
    parsers["lr-find"].add_argument("--output", help="where the plot and the curve go (default: runs/lr-find-<data>-<regime>)")

    p = parsers["evaluate"]
    p.add_argument("run", help="a run folder written by 'transferkit train'")
    p.add_argument("--data", help="a labelled CSV / JSONL file or image folder (default: the run's own test metrics)")
    p.add_argument("--text-column", help="column with the text (default: the one used in training)")
    p.add_argument("--label-column", help="column with the label (default: the one used in training)")
    p.add_argument("--pair-column", help="column with the second text of each pair (default: the one used in training)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = parsers["predict"]
    p.add_argument("run", help="a run folder written by 'transferkit train'")
    p.add_argument("--input", help="a CSV / JSONL file of texts; for an image run, an image file or a folder of images")
    p.add_argument("--text", "--question", dest="text", help="a single text to label (a question-answering run: the question)")
    p.add_argument("--pair", "--context", dest="pair", help="with --text, for a text-pair run: the second text (question answering: the context)")
    p.add_argument("--prompt", help="generation runs: a prompt to answer (greedy, through the model's chat template)")
    p.add_argument("--max-new-tokens", type=int, help="generation runs: the longest answer (default: the run's lm.max_new_tokens)")
    p.add_argument("--output", help="where to write the input rows with predicted_label and probability added "
                   "(.csv, .tsv, .jsonl, .json or .parquet; the input's own format keeps every byte of its rows)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--text-column", help="column with the text (default: the one used in training)")
    p.add_argument("--pair-column", help="column with the second text of each pair (default: the one used in training)")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per forward pass (default: 32; a causal LM sizes its own)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:N or mps")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON: per input, the label, its probability and every label's")

    p = parsers["export"]
    p.add_argument("run", help="a run folder written by 'transferkit train'")
    p.add_argument("--format", required=True, choices=["merged", "onnx", "gguf"],
                   help="merged: lora / prompt runs as a plain model folder; onnx: encoders and image models; "
                   "gguf: not available (says why)")
    p.add_argument("--output", required=True, help="the folder to write (new, or an earlier export with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")

    p = parsers["plan"]
    p.add_argument("--model", default="minilm-l6", help="built-in name, model folder, config.json or .gguf file (only the config is read)")
    p.add_argument("--regime", help="full, freeze, lora or prompt (default: all four side by side)")
    p.add_argument("--precision", default="mixed-bf16", help="fp32, mixed-bf16, mixed-fp16, bf16, int8 or int4 (default: mixed-bf16)")
    p.add_argument("--optimizer", default="adamw", help="adamw, adamw-8bit or sgd (default: adamw)")
    p.add_argument("--batch", type=int, default=16, help="examples per forward pass (default: 16)")
    p.add_argument("--seq", type=int, help="tokens per example (default: 128, transferkit's model.max_length; with --task qa "
                   "384, qa.max_length: tokens per window)")
    p.add_argument("--stride", type=int, default=QAConfig.stride, help="with --task qa: context tokens that consecutive "
                   f"windows share (default: {QAConfig.stride}, qa.stride)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute each block in the backward pass")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default: 16)")
    p.add_argument("--lora-targets", help="comma-separated linear-layer names for LoRA (default: all linear layers)")
    p.add_argument("--task", help="classify, regress or multilabel (a sequence head; --labels outputs), qa (a span head on "
                   "windows of --seq tokens), tokens (a tag per token), or lm / generate (next-token prediction) (default: a "
                   "built-in dataset's own, else classify)")
    p.add_argument("--labels", type=int, help="number of classes (default: counted from --data, else 2)")
    p.add_argument("--device", default="cuda", help="cuda or cpu: which kernels the plan assumes (default: cuda)")
    p.add_argument("--gpu-memory", help="memory budget per device: 24GiB, 24GB (10^9 bytes), 80G or 24 (GiB)")
    p.add_argument("--processes", type=int, default=1, help="data-parallel processes, one device each; figures are "
                   "per device and --batch is each one's micro-batch (default: 1)")
    p.add_argument("--sharding", default="none", help="none (DDP: a full replica per device) or fsdp (full shard: "
                   "weights, gradients and optimizer state split --processes ways) (default: none)")
    p.add_argument("--data", help="built-in dataset or CSV / JSONL file: adds advice on which regime suits it")
    p.add_argument("--text-column", help="column with the text (default: text)")
    p.add_argument("--label-column", help="column with the label (default: label)")
    p.add_argument("--examples", type=int, help="instead of --data: how many labelled examples you have")
    p.add_argument("--classes", type=int, help="with --examples: how many classes (default: 2, assumed balanced)")
    p.add_argument("--learning-curve", help="compare.json of an earlier comparison, or results you measured (see below)")
    p.add_argument("--json", action="store_true", help="print the whole breakdown as JSON")
    parser.commands = parsers
    return parser


def _add_model_and_data(p) -> None:
    """The flags compare, tune and lr-find share with train: which model, which data, which columns."""
    p.add_argument("--model", help="built-in model name or a local model folder")
    p.add_argument("--data", help="built-in dataset name or a data file / image folder")
    p.add_argument("--text-column", help="column with the input text (default: text)")
    p.add_argument("--label-column", help="column with the label (default: label)")
    p.add_argument("--pair-column", help="column with the second text of a text pair")
    p.add_argument("--task", help="classify, regress, multilabel, tokens or qa (default: a built-in dataset's own, else classify)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (no usage block) and exit code 2, like every other error."""

    def error(self, message: str):
        raise UserError(f"{message}; see '{self.prog} --help'")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the run being built is discarded, nothing is half-written."""


def launch(processes: int, argv: list[str]) -> int:
    """`train --processes N`: the same command as N processes on this machine, data-parallel through
    accelerate (DDP: gloo on CPUs, NCCL on GPUs), each with its share of the cores. The environment is
    what `accelerate launch` / torchrun would set; process 0 speaks, the others' output is shown only
    if one of them fails on its own. The first to fail stops the rest."""
    import socket
    import subprocess
    import tempfile
    import time

    import torch

    rest, skip = [], False
    for word in argv:  # the command without --processes: each process trains, none launches
        if skip or word.startswith("--processes="):
            skip = False
            continue
        skip = word == "--processes"
        if not skip:
            rest.append(word)
    with socket.socket() as s:  # a free port for the processes to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(processes),
           "LOCAL_WORLD_SIZE": str(processes)}  # fmt: skip
    if torch.cuda.is_available():
        if processes > torch.cuda.device_count():
            raise UserError(f"--processes {processes}: this machine has {torch.cuda.device_count()} GPUs; use at most that many")
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))  # no oversubscribed cores
    logs = [tempfile.TemporaryFile() for _ in range(processes - 1)]
    children = [
        subprocess.Popen([sys.executable, "-m", "transferkit", *rest], env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                         stdout=None if rank == 0 else subprocess.DEVNULL, stderr=None if rank == 0 else logs[rank - 1])
        for rank in range(processes)
    ]  # fmt: skip
    try:
        while any(child.poll() is None for child in children) and not any(child.poll() for child in children):
            time.sleep(0.2)
        # One failed: the others most often fail the same way a moment later (bad input), and the
        # main one says why. Those still running after a grace period are stopped.
        deadline = time.monotonic() + 5
        while any(child.poll() is None for child in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        stopped = [child.poll() is None for child in children]
        for child, stop in zip(children, stopped):
            if stop:
                child.terminate()
        codes = [child.wait() for child in children]
    except BaseException:
        for child in children:
            child.terminate()
        raise
    if codes[0] and not stopped[0] or not any(codes):
        return codes[0] % 256
    rank = next((i for i, code in enumerate(codes) if code and i), None)  # a worker failed and the main one did not say why
    if rank is None:
        return codes[0] % 256
    logs[rank - 1].seek(0)
    sys.stderr.write(logs[rank - 1].read().decode(errors="replace")[-4000:])
    return codes[rank] % 256


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Deprecation notices from inside transformers / peft are for their developers, not our users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    from .report.text import show_data_warnings

    show_data_warnings()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()

    def on_sigterm(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        if not argv or argv[0] not in parser.commands:
            if not argv or argv[0] in ("-h", "--help"):
                parser.print_help()
                return 0 if argv else 2
            parser.parse_args(argv)  # --version and the like; anything else is an error
            return 2
        # Intermixed: overrides (section.key=value) may stand before, between or after the flags.
        args = parser.commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command, args.argv = argv[0], argv
        code = COMMANDS[args.command][0](args) or 0
        sys.stdout.flush()
        return code
    except UserError as e:
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated; nothing was half-written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted; nothing was half-written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception:
        traceback.print_exc()
        print("\nThat is a bug in transferkit, not a problem with your input. Please report it, with the command "
              "you ran and the lines above, to the transferkit developers (an issue in the project's repository).", file=sys.stderr)  # fmt: skip
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def printable(text: str, limit: int = 600) -> str:
    """A message safe for a terminal: control and invisible characters shown as escapes, long texts cut."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    bad = [i for i in items if "=" not in i]
    if bad:
        raise UserError(f"'{bad[0]}' is not an override; put the YAML config first and overrides as section.key=value")
    return None, items


def _print_assets(table: dict) -> None:
    for asset in table.values():
        state = "installed" if asset.installed else f"not installed: {asset.install}"
        print(f"{asset.name:<16} {asset.description}\n{'':<16} {state}")
