"""Feature extraction with every default against a logistic-regression probe on the same cached features.

`transferkit train --regime freeze` (every default) and, beside it, a plain multinomial logistic
regression written here: full-batch L-BFGS on the standardised features of the same backbone, the L2
strength picked from four values on the same validation split, tested on the same test split. The two
must agree within a few points; the probe here is the yardstick issue 12 sets.

    .venv/bin/python benchmarks/freeze_probe.py                        # 30 images x 10 Fashion-MNIST classes, 32 px
    .venv/bin/python benchmarks/freeze_probe.py --per-class 100 --json benchmarks/results-freeze-probe-cpu.json
    .venv/bin/python benchmarks/freeze_probe.py --data bbc-news --model minilm-l6

Needs: apt-get install dataset-fashion-mnist (for the default image folder) and bash scripts/install.sh.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
from task_heads import cpu_flags  # noqa: E402  (the vector instructions, as every benchmark prints)

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
L2_VALUES = (1e-4, 1e-3, 1e-2, 1e-1)


def image_folder(root: Path, per_class: int, size: int, seed: int) -> Path:
    """`per_class` grey Fashion-MNIST training images of each class, resized to `size` px, as class folders."""
    from PIL import Image

    images = np.frombuffer(gzip.open(FASHION / "train-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.open(FASHION / "train-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    rng = np.random.default_rng(seed)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in rng.choice(np.flatnonzero(labels == k), per_class, replace=False):
            Image.fromarray(images[i], mode="L").resize((size, size), Image.BILINEAR).save(root / name / f"{i}.png")
    return root


def cached_features(cfg) -> tuple[dict, dict]:
    """The frozen backbone's features of each split, exactly as `--regime freeze` computes them."""
    from accelerate import Accelerator

    from transferkit import tasks
    from transferkit.models import kind_of, load_model
    from transferkit.runs import _cache_features, resolve_precision, seed_everything
    from transferkit.training.loop import Progress

    task = tasks.make(kind_of(cfg.model), cfg)
    seed_everything(cfg.train.seed)
    splits = task.read(cfg.data, cfg.train.seed)
    model = load_model(cfg, task)
    model.eval()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model.to(accelerator.device)
    ctx = tasks.Context(cfg, accelerator, resolve_precision(cfg.train.precision, accelerator.device), Progress())
    items = {n: task.encode(model, getattr(splits, n)) for n in ("train", "validation", "test")}
    features, _ = _cache_features(model, items, ctx)
    as_arrays = {n: (torch.stack([i["features"] for i in f]).double(), torch.tensor([int(i["labels"]) for i in f])) for n, f in features.items()}
    return as_arrays, {n: len(getattr(splits, n)) for n in ("train", "validation", "test")}


def logistic_probe(features: dict) -> dict:
    """Multinomial logistic regression, L2 from L2_VALUES by validation accuracy (then loss)."""
    (x, y), (xv, yv), (xt, yt) = features["train"], features["validation"], features["test"]
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z, zv, zt = ((a - mean) / std for a in (x, xv, xt))
    classes = int(max(y.max(), yv.max(), yt.max())) + 1
    best = None
    for l2 in L2_VALUES:
        w = torch.zeros(z.shape[1], classes, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-8, tolerance_change=1e-12)

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(z @ w + b, y) + l2 * w.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            val_logits = zv @ w + b
            score = ((val_logits.argmax(1) == yv).double().mean().item(), -torch.nn.functional.cross_entropy(val_logits, yv).item())
            test = ((zt @ w + b).argmax(1) == yt).double().mean().item()
        if best is None or score > best[0]:
            best = (score, l2, test)
    return {"l2": best[1], "validation_accuracy": best[0][0], "test_accuracy": best[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a data set or folder (default: a Fashion-MNIST folder built here)")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="extra section.key=value for both sides")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import transferkit

    print(f"CPU flags: {cpu_flags()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tk-probe-") as tmp:
        data = args.data or str(image_folder(Path(tmp) / "images", args.per_class, args.size, args.seed))
        overrides = {"regime": "freeze", "model.name": args.model, "data.name": data, "output": str(Path(tmp) / "run"),
                     "train.seed": args.seed, **dict(s.split("=", 1) for s in args.set)}  # fmt: skip
        cfg = transferkit.load_config(None, overrides).with_dataset_defaults()
        started = time.perf_counter()
        run = transferkit.train(cfg)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        features, sizes = cached_features(cfg)
        reference = logistic_probe(features)
        reference["seconds"] = time.perf_counter() - started
    task_metric = run.metrics["test"]
    result = {
        "cpu": cpu_flags(), "threads": torch.get_num_threads(),
        "data": args.data or f"fashion-mnist {args.per_class}/class, {args.size} px, grey",
        "model": args.model,
        "sizes": sizes,
        "transferkit_freeze": {"test_accuracy": task_metric["accuracy"], "seconds": train_s,
                               "l2": run.metrics["stages"][-1]["best_validation"].get("l2"),
                               "validation_accuracy": run.metrics["validation"].get("accuracy")},  # fmt: skip
        "logistic_probe": reference,
    }
    result["gap_points"] = 100 * (reference["test_accuracy"] - task_metric["accuracy"])
    print(json.dumps(result, indent=2))
    print(f"freeze (every default) {task_metric['accuracy']:.4f}  logistic probe {reference['test_accuracy']:.4f}  "
          f"gap {result['gap_points']:+.1f} points")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
