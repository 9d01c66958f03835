"""MiniLM on SQuAD v1.1 (issue 14): full, lora, freeze and scratch on 4,000 training questions, and full
and scratch at three training sizes (F1 against the number of training questions), each run a fresh
`transferkit train` process.

    .venv/bin/python benchmarks/squad_regimes.py --runs /tmp/squad-runs \\
        --json benchmarks/results-squad-cpu.json --plot benchmarks/squad-learning-curve.png

Every run validates on the same 500 questions (data.validation_size, a seeded subset of the split
held out of the training file) and tests on the same 1,000 questions of the official dev set
(data.test_size), with qa.max_length 384 and qa.stride 128. The trained regimes run 2 epochs: on
2 cores full's default 3 epochs take over half an hour at 4,000 questions (the first row measures
that), scratch's default 10 about two hours; with the same budget for all, the gap to scratch is what
pre-training gives. freeze fits its head at its own defaults. A run folder under --runs that already
holds metrics.json is read, not run again, so an interrupted benchmark goes on where it stopped; a run
whose folder is gone but whose row is in the --json file keeps that row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COMMON = ["--model", "minilm-l6", "--data", "squad", "--task", "qa", "data.validation_size=500", "data.test_size=1000"]
TWO = ["train.epochs=2"]
# (run name, regime, training questions, overrides)
PLAN = [("full-4000-defaults", "full", 4000, []), ("full-4000", "full", 4000, TWO), ("lora-4000", "lora", 4000, TWO),
        ("freeze-4000", "freeze", 4000, []), ("scratch-4000", "scratch", 4000, TWO), ("full-1000", "full", 1000, TWO),
        ("scratch-1000", "scratch", 1000, TWO), ("full-250", "full", 250, TWO), ("scratch-250", "scratch", 250, TWO)]  # fmt: skip
CURVE = ("full", "scratch")


def cpu_flags() -> str:
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    return " ".join(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2",)) or "none"


def run(name: str, regime: str, size: int, overrides: list[str], runs: Path, earlier: dict[str, dict]) -> dict:
    """One run's results, from its folder when it has finished before, else from an earlier results file."""
    out, wall = runs / name, runs / f"{name}.seconds"
    if not (out / "metrics.json").is_file() and name in earlier:
        return earlier[name]
    if not (out / "metrics.json").is_file():
        started = time.perf_counter()
        command = [sys.executable, "-m", "transferkit", "train", *COMMON, "--regime", regime, f"data.train_size={size}", *overrides,
                   "--output", str(out)]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall.write_text(f"{time.perf_counter() - started:.1f}\n")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"name": name, "regime": regime, "train_questions": size, "overrides": overrides, "f1": metrics["test"]["f1"],
            "exact_match": metrics["test"]["exact_match"], "validation_f1": metrics["validation"].get("f1"),
            "train_seconds": metrics["train_seconds"], "wall_seconds": float(wall.read_text()) if wall.is_file() else None,
            "trainable": metrics["parameters"]["trainable"], "peak_rss_mb": metrics["peak_rss_mb"], "windows": metrics["windows"],
            "stages": [{k: stage.get(k) for k in ("name", "lr", "epochs", "steps", "best_step", "stopped_early")}
                       for stage in metrics.get("stages", [])]}  # fmt: skip


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for regime in CURVE:
        points = sorted((r["train_questions"], r["f1"]) for r in rows if r["regime"] == regime and r["overrides"] == TWO)
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{regime} (2 epochs)")
    for r in rows:
        if r["regime"] not in CURVE or r["overrides"] != TWO:
            ax.scatter([r["train_questions"]], [r["f1"]], marker="s" if r["regime"] != "full" else "^", label=r["name"], zorder=3)
    sizes = sorted({r["train_questions"] for r in rows})
    ax.set(xscale="log", xlabel="training questions", ylabel="test F1 (1,000 dev questions)",
           title="MiniLM-L6 on SQuAD v1.1")  # fmt: skip
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder for the run folders (kept, and reused when run again)")
    parser.add_argument("--only", help="comma-separated run names to run, e.g. full-4000,lora-4000 (default: all)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write F1 against training questions here (PNG)")
    args = parser.parse_args()
    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores", flush=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    chosen = [entry for entry in PLAN if args.only is None or entry[0] in args.only.split(",")]
    earlier = {}
    if args.json and args.json.is_file():
        earlier = {row["name"]: row for row in json.loads(args.json.read_text())["rows"]}
    rows = []
    for name, regime, size, overrides in chosen:
        row = run(name, regime, size, overrides, args.runs, earlier)
        rows.append(row)
        print(f"{name:20} F1 {row['f1']:.2f}  EM {row['exact_match']:.2f}  train {row['train_seconds']:.0f} s"
              f"  wall {row['wall_seconds'] or float('nan'):.0f} s  trainable {row['trainable']:,}", flush=True)  # fmt: skip
        if args.json:  # after every run: an interrupted benchmark keeps what it measured
            args.json.write_text(json.dumps({"cpu_flags": cpu_flags(), "common": COMMON, "rows": rows}, indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
