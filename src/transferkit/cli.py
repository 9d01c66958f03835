"""The `transferkit` command: subcommands as a dict of functions.

Library code never prints; this module owns progress bars, tables and error messages.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import UserError

EXAMPLES = {
    "train": """examples:
  transferkit train                                          # built-in default: minilm-l6 on bbc-news, full fine-tuning
  transferkit train configs/bbc-news/lora.yaml train.lr=3e-4 # a YAML config plus dotted overrides
  transferkit train --model ./my-bert --data reviews.csv --text-column review --label-column stars \\
                    --regime freeze --output runs/reviews""",
    "evaluate": """examples:
  transferkit evaluate runs/reviews                          # the metrics measured at the end of training
  transferkit evaluate runs/reviews --data held-out.csv --json""",
    "predict": """examples:
  transferkit predict runs/reviews --input new.csv --output predictions.csv
  transferkit predict runs/reviews --text "Shares fell sharply after the results."
  transferkit predict runs/photos --input photo.jpg                 # an image run: one image ...
  transferkit predict runs/photos --input new-photos/ --output predictions.csv   # ... or a folder""",
    "models": "example:\n  transferkit models            # then: transferkit train --model minilm-l6 ...",
    "datasets": "example:\n  transferkit datasets          # then: transferkit train --data bbc-news ...",
}


def cmd_train(args) -> None:
    from .config import load_config
    from .runs import train

    config_path, overrides = _split_config_args(args.config_and_overrides)
    flags = {
        "model.name": args.model,
        "data.name": args.data,
        "data.text_column": args.text_column,
        "data.label_column": args.label_column,
        "data.validation": args.validation,
        "data.test": args.test,
        "regime": args.regime,
        "output": args.output,
        "train.epochs": args.epochs,
        "train.lr": args.lr,
        "train.seed": args.seed,
    }
    flag_overrides = [f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.overwrite:
        flag_overrides.append("overwrite=true")
    if args.trust_remote_code:
        flag_overrides.append("model.trust_remote_code=true")
    cfg = load_config(config_path, flag_overrides + overrides)
    run = train(cfg, progress=_BarProgress())
    test = run.metrics["test"]
    print(
        f"test accuracy {test['accuracy']:.4f}  macro-F1 {test['macro_f1']:.4f}  "
        f"({test['examples']} test examples, regime {cfg.regime}, {run.metrics['train_seconds']:.0f} s)"
    )
    print(f"run folder: {run.dir}  (model/, metrics.json, metrics.jsonl, config.yaml)")
    skipped = run.metrics["data"].get("skipped_files") or []
    if skipped:
        print(f"skipped {len(skipped)} files that are not images (listed in metrics.json), e.g. {skipped[0]}")


def cmd_evaluate(args) -> None:
    from .inference import check_run_dir, evaluate_file

    if args.data:
        metrics = evaluate_file(args.run, args.data, args.text_column, args.label_column)
    else:
        path = check_run_dir(args.run) / "metrics.json"
        if not path.is_file():
            raise UserError(f"'{args.run}' holds no finished run (no metrics.json); pass --data to evaluate its model")
        metrics = json.loads(path.read_text())["test"]
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_metrics(metrics))


def cmd_predict(args) -> None:
    from .data.tables import read_rows, read_texts
    from .inference import load_run, predict_proba

    if (args.input is None) == (args.text is None):
        raise UserError("give either --input FILE or --text 'some text'")
    model, cfg = load_run(args.run)
    if model.modality == "image":
        return _predict_images(args, model)
    text_column = args.text_column or cfg.data.text_column
    texts = [args.text] if args.text is not None else read_texts(args.input, text_column)
    probs = predict_proba(model, texts)
    labels = model.label_names
    best, index = probs.max(-1)
    predicted = [(labels[i], p) for i, p in zip(index.tolist(), best.tolist())]
    if args.text is not None:
        label, p = predicted[0]
        print(f"{label}\t{p:.4f}")
        return
    rows = read_rows(args.input)
    for row, (label, p) in zip(rows, predicted):
        row["predicted_label"], row["probability"] = label, round(p, 6)
    if args.output is None:
        for row, (label, p) in zip(rows, predicted):
            print(f"{label}\t{p:.4f}\t{str(row[text_column])[:70]!r}")
        return
    _write_rows(Path(args.output), rows)
    print(f"wrote {len(rows)} predictions to {args.output} (columns predicted_label, probability)")


def _predict_images(args, model) -> None:
    """Label an image file or every image in a folder: print or write path, label, probability."""
    from .data.images import check_image, is_image_file, list_images
    from .inference import predict_proba

    if args.text is not None:
        raise UserError("this run's model reads images; give --input IMAGE or --input FOLDER instead of --text")
    path = Path(args.input)
    if path.is_dir():
        files, skipped = list_images(path)
        if not files:
            raise UserError(f"folder '{path}' holds no image files; give a folder of .png / .jpg images")
    elif is_image_file(path):
        check_image(path)
        files, skipped = [path], []
    elif path.exists():
        raise UserError(f"'{path}' is not an image file; give an image or a folder of images")
    else:
        raise UserError(f"input '{path}' does not exist; check the path")
    probs = predict_proba(model, files)
    best, index = probs.max(-1)
    rows = [{"path": str(f), "predicted_label": model.label_names[i], "probability": round(p, 6)}
            for f, i, p in zip(files, index.tolist(), best.tolist())]  # fmt: skip
    note = f" (skipped {len(skipped)} files that are not images)" if skipped else ""
    if args.output is None:
        for row in rows:
            print(f"{row['predicted_label']}\t{row['probability']:.4f}\t{row['path']}")
        if note:
            print(note.strip(" ()"), file=sys.stderr)
        return
    _write_rows(Path(args.output), rows)
    print(f"wrote {len(rows)} predictions to {args.output} (columns path, predicted_label, probability){note}")


def cmd_models(args) -> None:
    from .assets import MODELS

    _print_assets(MODELS)


def cmd_datasets(args) -> None:
    from .assets import DATASETS

    _print_assets(DATASETS)


COMMANDS = {
    "train": (cmd_train, "fine-tune a pre-trained model on your data"),
    "evaluate": (cmd_evaluate, "metrics of a finished run, on its test split or on new labelled data"),
    "predict": (cmd_predict, "label new texts with a finished run's model"),
    "models": (cmd_models, "list the built-in models and whether each is installed"),
    "datasets": (cmd_datasets, "list the built-in datasets and whether each is installed"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferkit",
        description="Adapt a pre-trained model to your task and data, and see what each regime costs and keeps.",
        epilog="examples:\n  transferkit train\n  transferkit train --data reviews.csv --regime lora\n"
        "  transferkit predict runs/bbc-news-full --text 'Shares fell sharply.'\n"
        "run 'transferkit COMMAND --help' for each command's options",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parsers = {
        name: sub.add_parser(
            name, help=help_, description=help_, epilog=EXAMPLES.get(name), formatter_class=argparse.RawDescriptionHelpFormatter
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
    p.add_argument("--label-column", help="column with the label (default: label)")
    p.add_argument("--validation", help="a separate validation file (default: split off the data)")
    p.add_argument("--test", help="a separate test file (default: split off the data)")
    p.add_argument("--regime", help="full, freeze, lora, prompt, staged or scratch (default: full)")
    p.add_argument("--epochs", type=int, help="passes over the training data (default: the regime's own)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the regime's own)")
    p.add_argument("--seed", type=int, help="seed for the split, the initialisation and the batch order (default: 0)")
    p.add_argument("--output", help="run folder (default: runs/<data>-<regime>)")
    p.add_argument("--overwrite", action="store_true", help="replace a run folder that already holds a finished run")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped inside the model folder")

    p = parsers["evaluate"]
    p.add_argument("run", help="a run folder written by 'transferkit train'")
    p.add_argument("--data", help="a labelled CSV / JSONL file or image folder (default: the run's own test metrics)")
    p.add_argument("--text-column", help="column with the text (default: the one used in training)")
    p.add_argument("--label-column", help="column with the label (default: the one used in training)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = parsers["predict"]
    p.add_argument("run", help="a run folder written by 'transferkit train'")
    p.add_argument("--input", help="a CSV / JSONL file of texts; for an image run, an image file or a folder of images")
    p.add_argument("--text", help="a single text to label")
    p.add_argument("--output", help="where to write the rows with predicted_label and probability added (.csv or .jsonl)")
    p.add_argument("--text-column", help="column with the text (default: the one used in training)")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Deprecation notices from inside transformers / peft are for their developers, not our users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        COMMANDS[args.command][0](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def format_metrics(metrics: dict) -> str:
    """Accuracy, macro-F1, a per-class table and the confusion matrix as text."""
    lines = [f"accuracy  {metrics['accuracy']:.4f}", f"macro-F1  {metrics['macro_f1']:.4f}", f"examples  {metrics['examples']}", ""]
    names = list(metrics["per_class"])
    width = max(len(n) for n in names + ["class"])
    lines.append(f"{'class':<{width}}  precision  recall     f1  support")
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}  {m['support']:7d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cell = max(5, max(len(str(v)) for row in metrics["confusion_matrix"] for v in row) + 1)
    lines.append(" " * width + "".join(f"{n[:cell - 1]:>{cell}}" for n in names))
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


class _BarProgress:
    """A tqdm bar per training stage, with the loss and the last validation accuracy."""

    def start(self, name: str, total_steps: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, desc=name, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.values = {}

    def step(self, **values) -> None:
        self.values.update({k: f"{v:.4f}" for k, v in values.items()})
        self.bar.set_postfix(self.values, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    bad = [i for i in items if "=" not in i]
    if bad:
        raise UserError(f"'{bad[0]}' is not an override; put the YAML config first and overrides as section.key=value")
    return None, items


def _write_rows(path: Path, rows: list[dict]) -> None:
    from .checkpoint import write_text

    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(row) + "\n" for row in rows)
    elif path.suffix.lower() in (".csv", ".tsv"):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        raise UserError(f"output file '{path}' must end in .csv, .tsv or .jsonl")
    if not path.parent.exists():
        raise UserError(f"folder '{path.parent}' of the output file does not exist; create it first")
    write_text(path, text)


def _print_assets(table: dict) -> None:
    for asset in table.values():
        state = "installed" if asset.installed else f"not installed: {asset.install}"
        print(f"{asset.name:<16} {asset.description}\n{'':<16} {state}")
