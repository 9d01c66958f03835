"""The task heads of issue 11 on real data, each regime at its defaults, against a simple baseline.

    .venv/bin/python benchmarks/task_heads.py                          # all three, full / lora / freeze
    .venv/bin/python benchmarks/task_heads.py --tasks regress --json benchmarks/results-task-heads-cpu.json

- regress: MiniLM on vader-tweets (4,200 tweets, mean human sentiment rating -4..4), Pearson on the
  test split, against a ridge probe on mean-pooled frozen features of the same model (the ridge
  strength chosen on the validation split, the same seeded split as transferkit's runs).
- pairs: MiniLM on presupposition-nli (735 sentence pairs, 3 classes), accuracy against the majority class.
- multilabel: MiniLM on bbc-news-multilabel (2,225 articles: topic + themes), micro-F1 against the
  per-label prior (the k most frequent training labels for every row, k chosen on training).

Each transferkit run is a fresh `transferkit train` process with every default; the CPU's flags are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = {
    "regress": {"data": "vader-tweets", "metric": "pearson"},
    "pairs": {"data": "presupposition-nli", "metric": "accuracy"},
    "multilabel": {"data": "bbc-news-multilabel", "metric": "micro_f1"},
}


def cpu_flags() -> str:
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    return " ".join(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2",)) or "none"


def run(data: str, regime: str, out: Path) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "transferkit", "train", "--data", data, "--regime", regime, "--output", str(out)],
                   check=True, capture_output=True, text=True)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    return {"test": {k: v for k, v in metrics["test"].items() if isinstance(v, float)}, "seconds": time.perf_counter() - started,
            "train": metrics["data"]["train"], "test_examples": metrics["data"]["test"]}  # fmt: skip


@torch.no_grad()
def mean_pooled(texts: list[str]) -> torch.Tensor:
    """MiniLM's mean-pooled last hidden states (eval mode, 128 tokens): what it was trained to embed."""
    from transformers import AutoModel, AutoTokenizer

    from transferkit import assets

    folder = assets.locate_model("minilm-l6").path
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    out = []
    for i in range(0, len(texts), 64):
        enc = tokenizer(texts[i : i + 64], truncation=True, max_length=128, padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out).double()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def ridge_probe() -> dict:
    """Closed-form ridge on standardised mean-pooled features; strength chosen on validation."""
    from transferkit import load_config
    from transferkit.tasks import Regression

    cfg = load_config(None, {"data.name": TASKS["regress"]["data"], "task": "regress"})
    splits = Regression(cfg).read(cfg.data, cfg.train.seed)
    x = {n: mean_pooled(list(getattr(splits, n).inputs)) for n in ("train", "validation", "test")}
    y = {n: torch.tensor(getattr(splits, n).labels, dtype=torch.float64)[:, 0] for n in x}
    mean, std = x["train"].mean(0), x["train"].std(0) + 1e-8
    z = {n: (v - mean) / std for n, v in x.items()}

    def fit(strength: float) -> torch.Tensor:
        a = torch.cat([z["train"], torch.ones(len(z["train"]), 1, dtype=torch.float64)], 1)
        return torch.linalg.solve(a.T @ a + strength * torch.eye(a.shape[1], dtype=torch.float64), a.T @ y["train"])

    def predict(w, n):
        return torch.cat([z[n], torch.ones(len(z[n]), 1, dtype=torch.float64)], 1) @ w

    scores = {s: pearson(predict(fit(s), "validation"), y["validation"]) for s in (0.1, 1, 10, 100, 1000, 10000)}
    best = max(scores, key=scores.get)
    return {"strength": best, "validation_pearson": scores[best], "test_pearson": pearson(predict(fit(best), "test"), y["test"])}


def label_prior_f1() -> float:
    """Micro-F1 on the test split of the best constant answer the label priors give: the k most frequent
    training labels for every row, k chosen on the training split."""
    from collections import Counter

    from transferkit import load_config
    from transferkit.tasks import MultiLabel

    cfg = load_config(None, {"data.name": TASKS["multilabel"]["data"], "task": "multilabel"})
    splits = MultiLabel(cfg).read(cfg.data, cfg.train.seed)
    ranked = [label for label, _ in Counter(x for labels in splits.train.labels for x in labels).most_common()]

    def f1(answer: set, rows: list) -> float:
        tp = sum(len(set(labels) & answer) for labels in rows)
        return 2 * tp / max(len(answer) * len(rows) + sum(len(labels) for labels in rows), 1)

    best = max(range(len(ranked) + 1), key=lambda k: f1(set(ranked[:k]), splits.train.labels))
    return f1(set(ranked[:best]), splits.test.labels)


def majority_share() -> float:
    from collections import Counter

    from transferkit import load_config
    from transferkit.tasks import Classification

    cfg = load_config(None, {"data.name": TASKS["pairs"]["data"]}).with_dataset_defaults()
    splits = Classification().read(cfg.data, cfg.train.seed)
    return Counter(splits.test.labels).most_common(1)[0][1] / len(splits.test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="regress,pairs,multilabel")
    parser.add_argument("--regimes", default="full,lora,freeze")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    print(f"CPU flags: {cpu_flags()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="tk-heads-"))
    results = {"cpu": cpu_flags()}
    baselines = {"regress": ("ridge probe on mean-pooled features", lambda: ridge_probe()["test_pearson"]),
                 "pairs": ("majority class", majority_share), "multilabel": ("per-label prior", label_prior_f1)}  # fmt: skip
    for task in args.tasks.split(","):
        spec = TASKS[task]
        name, baseline = baselines[task]
        value = baseline()
        results[task] = {"data": spec["data"], "metric": spec["metric"], "baseline": {"name": name, "value": value}, "regimes": {}}
        print(f"\n{task} on {spec['data']}: {name} {spec['metric']} {value:.4f}", flush=True)
        for regime in args.regimes.split(","):
            r = run(spec["data"], regime, work / f"{task}-{regime}")
            results[task]["regimes"][regime] = r
            print(f"  {regime:<7} {spec['metric']} {r['test'][spec['metric']]:.4f}  ({r['test'][spec['metric']] - value:+.4f} "
                  f"against the baseline)  {r['seconds']:.0f} s", flush=True)  # fmt: skip
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
