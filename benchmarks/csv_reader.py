"""The data reader against the one it replaced: the same 10,000-row CSV, MiniLM, the same steps.

    .venv/bin/python benchmarks/csv_reader.py                       # against commit 73e1eaa, 3 repeats
    .venv/bin/python benchmarks/csv_reader.py --baseline 73e1eaa --rows 10000 --steps 40 --repeats 3

The baseline's source is taken from git (`git archive`) into a temporary folder and run with the
same Python and packages. Each run is a fresh process of `transferkit train` (full fine-tuning,
`train.max_steps` optimizer steps of 16), alternating baseline and current, and the script prints the
medians of:
- first-epoch examples/s (stages[0].examples_per_second in metrics.json: the training loop alone);
- wall seconds end to end, for the current reader both with an empty cache (reads the CSV, stores
  it as Arrow, tokenizes) and with a warm one (a second run on the same file: nothing re-tokenized).
The CSV holds tweets with no line breaks inside a text, so both readers see the same texts (the old
one cut quoted newlines; see issue 10).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> str:
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} cores, " + " ".join(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx", "avx2")) or "none"


def make_csv(path: Path, rows: int) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from transferkit.data.builtin import read_builtin

    pool = read_builtin("tweet-sentiment")
    chosen = random.Random(0).sample(list(zip(pool.inputs, pool.labels)), rows)  # the file is sorted by label
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for text, label in chosen:
            writer.writerow([" ".join(text.split()), label])  # no line breaks of any kind inside a text


def run(src: Path, data: Path, out: Path, steps: int, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), TRANSFERKIT_CACHE=str(cache), HF_HUB_OFFLINE="1")
    argv = [sys.executable, "-m", "transferkit", "train", "--model", "minilm-l6", "--data", str(data), "--output", str(out),
            "--regime", "full", f"train.max_steps={steps}", "train.batch_size=16", "data.validation_size=200", "data.test_size=200",
            "train.patience=null"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(argv, check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_s": wall, "examples_per_second": metrics["stages"][0]["examples_per_second"], "accuracy": metrics["test"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="73e1eaa", help="git commit of the old reader (default: 73e1eaa)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write every run here")
    args = parser.parse_args()
    print(f"CPU: {cpu_flags()}")
    work = Path(tempfile.mkdtemp(prefix="tk-csv-bench-"))
    old = work / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    data = work / "tweets.csv"
    make_csv(data, args.rows)
    results: dict[str, list[dict]] = {"baseline": [], "current, empty cache": [], "current, warm cache": []}
    for i in range(args.repeats):
        results["baseline"].append(run(old / "src", data, work / f"old-{i}", args.steps, work / f"cache-old-{i}"))
        cache = work / f"cache-new-{i}"
        results["current, empty cache"].append(run(ROOT / "src", data, work / f"new-{i}", args.steps, cache))
        results["current, warm cache"].append(run(ROOT / "src", data, work / f"warm-{i}", args.steps, cache))
        print(f"repeat {i + 1}: " + "  ".join(f"{k} {v[-1]['wall_s']:.1f} s / {v[-1]['examples_per_second']:.1f} ex/s" for k, v in results.items()),
              flush=True)  # fmt: skip
    print(f"\n{args.rows:,} rows, {args.steps} steps of 16, medians of {args.repeats}:")
    print(f"{'reader':<24}{'train ex/s':>12}{'wall s':>10}{'accuracy':>10}")
    base = statistics.median(r["examples_per_second"] for r in results["baseline"])
    for name, runs in results.items():
        eps = statistics.median(r["examples_per_second"] for r in runs)
        print(f"{name:<24}{eps:>12.1f}{statistics.median(r['wall_s'] for r in runs):>10.1f}{runs[0]['accuracy']:>10.4f}  ({eps / base:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_flags(), "rows": args.rows, "steps": args.steps, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
