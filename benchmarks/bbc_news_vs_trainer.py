"""transferkit against Hugging Face Trainer (+ peft) on MiniLM / BBC News: same model, split,
epochs, batch size, learning rate and trainable parameters; wall time, examples/s and test
accuracy side by side, with ratios.

    .venv/bin/python benchmarks/bbc_news_vs_trainer.py                 # full, lora, freeze; 3 repeats
    .venv/bin/python benchmarks/bbc_news_vs_trainer.py --regimes freeze --repeats 5

Each job runs in a fresh child process (so peak memory is its own and no job warms another's
caches); the two tools alternate, A B A B, so drift in the machine's speed hits both alike.
Times are end to end, as a user waits for them: load the model, tokenize, train, predict the
test split, save the model. Medians over the repeats are printed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Same knobs on both sides. freeze: 3 epochs, as in the acceptance line.
SETTINGS = {
    "full": {"lr": 1e-4, "epochs": 1, "batch_size": 16},
    "lora": {"lr": 1e-3, "epochs": 1, "batch_size": 16},
    "freeze": {"lr": 1e-3, "epochs": 3, "batch_size": 32},
}


def run_transferkit(regime: str, settings: dict, train_size: int | None) -> dict:
    import transferkit

    out = tempfile.mkdtemp(prefix="tk-bench-")
    overrides = {
        "regime": regime,
        "output": out,
        "train.lr": settings["lr"],
        "train.epochs": settings["epochs"],
        "train.batch_size": settings["batch_size"],
        "train.patience": None,
        "data.train_size": train_size,
        # The model's own attention dropout, as Trainer runs it: the same recipe on both sides.
        # transferkit's default (off) makes its steps a fifth to a quarter faster again on a CPU.
        "model.attention_dropout": None,
        # The same recipe as Trainer's: the head in the loop (Adam, these epochs), not transferkit's
        # default L-BFGS probe, which fits to convergence and has no epochs to match.
        **({"freeze.solver": "adam"} if regime == "freeze" else {}),
    }
    started = time.perf_counter()
    run = transferkit.train(transferkit.load_config(None, overrides))
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "accuracy": run.test_accuracy,
        "train_examples": run.metrics["data"]["train"],
        "trainable": run.metrics["parameters"]["trainable"],
        "precision": run.metrics["precision"],
    }


def run_trainer(regime: str, settings: dict, train_size: int | None, bf16: bool) -> dict:
    """What a user of the peer writes: Trainer, DataCollatorWithPadding, peft for LoRA."""
    import numpy as np
    import transformers
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from transferkit import assets, load_config
    from transferkit.data.splits import load_splits

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    cfg = load_config(None, {"data.train_size": train_size})
    splits = load_splits(cfg.data, seed=0)  # the very split transferkit uses
    labels = splits.label_names
    path = assets.resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}
    )
    head = ("bert.pooler", "classifier")  # the same trainable parameters as transferkit's head
    if regime == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(task_type=TaskType.SEQ_CLS, r=16, lora_alpha=32, lora_dropout=0.0,
                       target_modules="all-linear", modules_to_save=list(head)),
        )
    elif regime == "freeze":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(head)

    def encode(examples):
        enc = tokenizer(examples.inputs, truncation=True, max_length=128)
        return [{"input_ids": i, "attention_mask": a, "labels": labels.index(y)}
                for i, a, y in zip(enc["input_ids"], enc["attention_mask"], examples.labels)]

    train_set, test_set = encode(splits.train), encode(splits.test)
    out = tempfile.mkdtemp(prefix="hf-bench-")
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=settings["batch_size"],
        per_device_eval_batch_size=64,
        learning_rate=settings["lr"],
        num_train_epochs=settings["epochs"],
        warmup_steps=0.1,  # transformers 5: a float below 1 is a ratio of the total steps
        weight_decay=0.01,
        lr_scheduler_type="linear",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        bf16=bf16,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    logits = trainer.predict(test_set).predictions
    accuracy = float((np.argmax(logits, -1) == np.array([x["labels"] for x in test_set])).mean())
    trainer.save_model(out)
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "accuracy": accuracy,
        "train_examples": len(train_set),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "precision": "bf16" if bf16 else "fp32",
    }


def _job(args: tuple) -> dict:
    tool, regime, settings, train_size, bf16 = args
    import torch

    torch.manual_seed(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_transferkit(regime, settings, train_size) if tool == "transferkit" else run_trainer(regime, settings, train_size, bf16)
    result["peak_rss_gb"] = max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 2**20
    return result


def in_child(*args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_job, (args,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regimes", default="full,lora,freeze")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=None, help="a stratified subset of the training split")
    parser.add_argument("--peer-bf16", action="store_true", help="also give Trainer bf16=True (its default is fp32)")
    parser.add_argument("--json", help="write every measurement to this file")
    args = parser.parse_args()

    peers = ["trainer"] + (["trainer-bf16"] if args.peer_bf16 else [])
    results: dict[str, dict[str, list[dict]]] = {}
    for regime in args.regimes.split(","):
        settings = SETTINGS[regime]
        results[regime] = {"transferkit": [], **{p: [] for p in peers}}
        for repeat in range(args.repeats):
            for tool in ["transferkit", *peers]:
                r = in_child("transferkit" if tool == "transferkit" else "trainer", regime, settings, args.train_size, tool == "trainer-bf16")
                results[regime][tool].append(r)
                print(f"[{regime} #{repeat + 1}] {tool:<12} {r['wall_s']:7.1f} s  accuracy {r['accuracy']:.4f}", flush=True)
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": SETTINGS, "results": results}, f, indent=2)


def print_table(results: dict) -> None:
    print("\nmedians (end-to-end wall time: load, tokenize, train, predict test, save)")
    print(f"{'regime':<7} {'tool':<12} {'epochs':>6} {'wall s':>8} {'s/epoch':>8} {'train ex/s':>10} {'accuracy':>9} "
          f"{'trainable':>10} {'peak GB':>8} {'speed-up':>9}")
    for regime, by_tool in results.items():
        epochs = SETTINGS[regime]["epochs"]
        ours = statistics.median(r["wall_s"] for r in by_tool["transferkit"])
        for tool, runs in by_tool.items():
            wall = statistics.median(r["wall_s"] for r in runs)
            examples = runs[0]["train_examples"] * epochs
            accuracy = statistics.median(r["accuracy"] for r in runs)
            peak = statistics.median(r["peak_rss_gb"] for r in runs)
            ratio = "" if tool == "transferkit" else f"{wall / ours:8.2f}x"
            print(f"{regime:<7} {tool:<12} {epochs:>6} {wall:8.1f} {wall / epochs:8.1f} {examples / wall:10.1f} "
                  f"{accuracy:9.4f} {runs[0]['trainable']:>10,} {peak:8.2f} {ratio:>9}")
    print("speed-up: the peer's median wall time / transferkit's (above 1: transferkit is faster)")


if __name__ == "__main__":
    main()
