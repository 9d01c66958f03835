"""What checkpointing costs a run: the seconds spent writing checkpoints (metrics.json's
checkpoints.seconds, timed inside the run) against the run's training time, at the default interval
and at shorter ones, on the same model, data and seed.

    .venv/bin/python benchmarks/checkpoint_cost.py                     # MiniLM full on BBC News, 1,000 articles
    .venv/bin/python benchmarks/checkpoint_cost.py --minutes 5,1,0.25 --json benchmarks/results-checkpoint-cost-cpu.json

Each setting is its own command, one after the other. Needs bash scripts/install.sh.
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

sys.path.insert(0, str(Path(__file__).parent))
from task_heads import cpu_flags  # noqa: E402  (the vector instructions, as every benchmark prints)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data", default="bbc-news")
    parser.add_argument("--regime", default="full")
    parser.add_argument("--minutes", default="5,0.5", help="train.checkpoint_minutes values (5: the default)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("overrides", nargs="*", help="section.key=value for every run (default: data.train_size=1000 train.epochs=1)")
    args = parser.parse_args()
    overrides = args.overrides or ["data.train_size=1000", "train.epochs=1"]
    print(f"CPU flags: {cpu_flags()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tk-ckpt-") as tmp:
        for minutes in args.minutes.split(","):
            out = Path(tmp) / f"run-{minutes}"
            command = [sys.executable, "-m", "transferkit", "train", "--model", args.model, "--data", args.data, "--regime", args.regime,
                       "--output", str(out), f"train.checkpoint_minutes={minutes}", *overrides]  # fmt: skip
            started = time.perf_counter()
            subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - started
            metrics = json.loads((out / "metrics.json").read_text())
            c = metrics["checkpoints"]
            rows.append({"checkpoint_minutes": float(minutes), "written": c["written"], "checkpoint_seconds": c["seconds"],
                         "train_seconds": metrics["train_seconds"], "wall_seconds": wall,
                         "share_of_train_time": c["seconds"] / metrics["train_seconds"],
                         "seconds_per_checkpoint": c["seconds"] / max(c["written"], 1), "test": metrics["test"].get("accuracy")})  # fmt: skip
            r = rows[-1]
            print(f"checkpoint_minutes={minutes}: {r['written']} checkpoints, {r['checkpoint_seconds']:.2f} s of {r['train_seconds']:.1f} s "
                  f"training ({100 * r['share_of_train_time']:.2f}%), {r['seconds_per_checkpoint']:.2f} s each; test {r['test']}", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_flags(), "overrides": overrides, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
