"""Each regime's defaults against the best a `transferkit tune` search finds, on the same data and split.

For each regime: one run with every default, a search of N trials (on the validation split only),
then the search's best.yaml trained as a user would (`transferkit train best.yaml`); the three on the
same split, and the table prints validation and test side by side with the gap in points.

    .venv/bin/python benchmarks/tune_vs_defaults.py --regimes freeze,lora --train-size 200 --trials 20
    .venv/bin/python benchmarks/tune_vs_defaults.py --regimes lora --train-size 200 --trials 20 --minutes 20 \
        --set data.validation_size=100 --json benchmarks/results-tune-lora-cpu.json

Every command runs as a child process (`python -m transferkit ...`), as a user would run it; the CPU
flags are printed first, as with every benchmark here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from task_heads import cpu_flags  # noqa: E402


def transferkit(*args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"transferkit {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def scores(run: Path, metric: str) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    return {"validation": metrics["validation"].get(metric), "test": metrics["test"].get(metric), "seconds": metrics["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="bbc-news")
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--regimes", default="freeze,lora,full,prompt,staged")
    parser.add_argument("--train-size", type=int, default=200)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--trial-train-size", type=int, help="trials train on this many (default: --train-size)")
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--set", action="append", default=[], help="section.key=value for every run and trial")
    parser.add_argument("--json")
    args = parser.parse_args()
    print(f"CPU flags: {cpu_flags()}", flush=True)
    results = {"cpu": cpu_flags(), "data": args.data, "model": args.model, "train_size": args.train_size, "trials": args.trials, "rows": []}
    common = ["--model", args.model, "--data", args.data, f"data.train_size={args.train_size}", *args.set]
    with tempfile.TemporaryDirectory(prefix="tk-tune-bench-") as tmp:
        for regime in args.regimes.split(","):
            out = Path(tmp) / regime
            default_s = transferkit("train", *common, "--regime", regime, "--output", str(out / "default"))
            search_args = ["tune", *common, "--regime", regime, "--trials", str(args.trials), "--output", str(out / "search")]
            if args.minutes:
                search_args += ["--minutes", str(args.minutes)]
            if args.trial_train_size:
                search_args += ["--train-size", str(args.trial_train_size)]
            search_s = transferkit(*search_args)
            search = json.loads((out / "search" / "tune.json").read_text())
            tuned_s = transferkit("train", str(out / "search" / "best.yaml"), f"output={out / 'tuned'}")
            default, tuned = scores(out / "default", args.metric), scores(out / "tuned", args.metric)
            states = [t["state"] for t in search["trials"]]
            row = {"regime": regime, "default": default, "tuned": tuned, "best_trial_validation": search["best"]["value"],
                   "best_settings": search["best"]["overrides"], "search_seconds": search_s, "trials": len(states),
                   "pruned": states.count("pruned"), "failed": states.count("failed"),
                   "gap_test_points": 100 * (tuned["test"] - default["test"]),
                   "wall_seconds": {"default": default_s, "search": search_s, "tuned": tuned_s}}  # fmt: skip
            results["rows"].append(row)
            print(f"{regime:<8} default val {default['validation']:.4f} test {default['test']:.4f} | tuned val {tuned['validation']:.4f} "
                  f"test {tuned['test']:.4f} | gap {row['gap_test_points']:+.1f} points | search {search_s / 60:.1f} min, "
                  f"{len(states)} trials ({row['pruned']} pruned, {row['failed']} failed) | best {search['best']['overrides']}", flush=True)  # fmt: skip
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
