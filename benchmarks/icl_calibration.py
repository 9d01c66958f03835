"""In-context classification with SmolLM2: prompt layouts, shots and every calibration mode.

For each data set, number of shots and prompt layout (lm.chat: off = plain text, turns, one-turn),
the validation and test splits are scored once, and each calibration mode (none, contextual,
domain, batch) is applied to the same scores; `auto` is the mode with the best validation accuracy,
as `transferkit train --calibrate` picks it. Demonstrations are chosen exactly as `--regime icl`
chooses them (icl.select=random, seeded, balanced).

    .venv/bin/python benchmarks/icl_calibration.py --json benchmarks/results-icl-calibration-cpu.json
    .venv/bin/python benchmarks/icl_calibration.py --data benchmarks/data/movie-product-sentiment --shots 8 --layouts one-turn,turns
    .venv/bin/python benchmarks/icl_calibration.py --select similar --data benchmarks/data/movie-product-sentiment --shots 8

Every row prints as it is measured, and --json is rewritten after each one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "movie-product-sentiment")


def machine() -> dict:
    """What the numbers were measured on: CPU model, the vector instructions torch uses, threads."""
    import torch
    import transformers

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), platform.processor())
    except OSError:
        model = platform.processor()
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        line = next((x for x in open("/proc/cpuinfo") if x.startswith("flags")), "")
        flags = " ".join(f for f in line.split(":", 1)[-1].split() if f.startswith(("avx", "fma", "amx", "sse4")))
    return {"cpu": model, "cpu_flags": flags, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "cores": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "precision": "fp32"}  # fmt: skip


def measure(dataset: str, shots: str, layout: str, select: str, sizes: dict, max_length: int, seed: int) -> dict:
    import transferkit
    from transferkit import tasks
    from transferkit.eval import calibration
    from transferkit.methods import icl
    from transferkit.models import load_model
    from transferkit.runs import seed_everything

    data = {"data.name": dataset, **{f"data.{k}": v for k, v in sizes.items()}}
    if os.path.isdir(dataset):  # a folder of train.csv, validation.csv and test.csv, used whole
        data = {"data.name": f"{dataset}/train.csv", "data.validation": f"{dataset}/validation.csv", "data.test": f"{dataset}/test.csv"}
    cfg = transferkit.load_config(None, {"model.name": "smollm2-135m", "regime": "icl", "icl.shots": shots, "icl.calibrate": "auto",
                                         "icl.select": select, "lm.chat": layout, "model.max_length": max_length, "train.seed": seed,
                                         **data})  # fmt: skip
    seed_everything(seed)
    task = tasks.make("causal", cfg)
    splits = task.read(cfg.data, cfg.train.seed)
    model = load_model(cfg, task).eval()
    icl.prepare(model, task, splits, cfg)
    row = {"dataset": os.path.basename(dataset.rstrip("/")), "shots": shots, "layout": layout, "select": select, "seed": seed, "labels": len(splits.label_names),
           "validation": len(splits.validation), "test": len(splits.test)}  # fmt: skip
    if select == "similar":
        prefixes = task.prefixes(model, list(splits.test.inputs))
        row["prefix_tokens"] = round(sum(map(len, prefixes)) / len(prefixes))
    else:
        row["prefix_tokens"] = len(model.prefix_ids())
    for name in ("validation", "test"):
        split = getattr(splits, name)
        started = time.perf_counter()
        raw, free = task.score_texts(model, list(split.inputs), calibration.MODES)
        row[f"{name}_seconds"] = time.perf_counter() - started
        row[name] = {mode: task._metrics(calibration.calibrated(raw, task.prior(mode, raw, free)), split.labels)["accuracy"]
                     for mode in calibration.MODES}  # fmt: skip
    row["auto"] = calibration.best_mode(row["validation"])
    row["test_auto"] = row["test"][row["auto"]]
    row["majority"] = max(splits.test.labels.count(n) for n in set(splits.test.labels)) / len(splits.test)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=f"{DATA},tweet-sentiment,bbc-news",
                        help="comma-separated built-in data sets or folders of train/validation/test.csv")
    parser.add_argument("--shots", default="0,8", help="comma-separated numbers of demonstrations (default: 0,8)")
    parser.add_argument("--layouts", default="off,turns,one-turn", help="comma-separated lm.chat values (default: off,turns,one-turn)")
    parser.add_argument("--select", default="random", help="icl.select: random or similar (default: random)")
    parser.add_argument("--train-size", type=int, default=200, help="training examples the demonstrations come from (default: 200)")
    parser.add_argument("--validation-size", type=int, default=100, help="validation examples auto chooses on (default: 100)")
    parser.add_argument("--test-size", type=int, default=200, help="test examples (default: 200)")
    parser.add_argument("--max-length", type=int, default=64, help="tokens kept of each text (default: 64)")
    parser.add_argument("--seeds", default="0", help="comma-separated train.seed values: which demonstrations (default: 0)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count())
    out = {"machine": machine(), "rows": []}
    print(" ".join(f"{k}={v}" for k, v in out["machine"].items()), flush=True)
    sizes = {"train_size": args.train_size, "validation_size": args.validation_size, "test_size": args.test_size}
    for dataset in args.data.split(","):
        for shots in args.shots.split(","):
            for layout, seed in [(x, int(s)) for x in args.layouts.split(",") for s in args.seeds.split(",")]:
                row = measure(dataset, shots, layout, args.select, sizes, args.max_length, seed)
                out["rows"].append(row)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(out, f, indent=2)
                test = " ".join(f"{m} {a:.3f}" for m, a in row["test"].items())
                validation = " ".join(f"{m} {a:.3f}" for m, a in row["validation"].items())
                print(f"{row['dataset']:<16} k={shots:>2} {layout:<8} {args.select:<7} seed {seed} prefix {row['prefix_tokens']:>4}: test [{test}] "
                      f"validation [{validation}] auto={row['auto']} -> test {row['test_auto']:.3f} (majority {row['majority']:.3f}; "
                      f"{row['validation_seconds']:.0f} + {row['test_seconds']:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
