"""One process against several: `transferkit train --processes N` on the same model, data and seed,
end to end (each job its own command: start, load, tokenize, train, test, save), N alternating
within each repeat, medians of the wall times, and the test metrics side by side.

On a machine with as many cores as processes' threads this measures what data parallelism costs
(the gradient exchange, the second model in memory, a second start), not a speed-up: the cores are
the same ones. On a machine with several GPUs it measures the speed-up.

    .venv/bin/python benchmarks/processes.py                               # MiniLM on BBC News, full and lora, N = 1, 2
    .venv/bin/python benchmarks/processes.py --regimes full --repeats 3 --json benchmarks/results-processes-cpu.json
    .venv/bin/python benchmarks/processes.py --no-dropout --repeats 1 data.train_size=500 train.epochs=1 train.distributed=fsdp

Needs bash scripts/install.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from task_heads import cpu_flags  # noqa: E402  (the vector instructions, as every benchmark prints)


def without_dropout(model: str, folder: Path) -> Path:
    """A copy of the model folder (a built-in name or a path) with every dropout probability at 0."""
    from transferkit import assets

    source = assets.MODELS[model].path() if model in assets.MODELS else Path(model)
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update({key: 0.0 for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "dropout") if key in config})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data", default="bbc-news")
    parser.add_argument("--regimes", default="full,lora")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-dropout", action="store_true", help="train a copy of the model with every dropout at 0: "
                        "processes draw their own dropout masks, so only without dropout can N processes match one to rounding")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("overrides", nargs="*", help="section.key=value for every run (default: data.train_size=500 train.epochs=1)")
    args = parser.parse_args()
    overrides = args.overrides or ["data.train_size=500", "train.epochs=1"]
    counts = [int(n) for n in args.processes.split(",")]
    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores", flush=True)
    results = {"cpu": cpu_flags(), "cores": os.cpu_count(), "overrides": overrides, "regimes": {}}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="tk-processes-") as tmp:
        if args.no_dropout:
            args.model = str(without_dropout(args.model, Path(tmp) / "model"))
            results["dropout"] = 0.0
        for regime in args.regimes.split(","):
            runs = {n: [] for n in counts}
            for repeat in range(args.repeats):
                for n in counts if repeat % 2 == 0 else counts[::-1]:  # alternate, so drift hits both sides
                    out = Path(tmp) / f"{regime}-{n}-{repeat}"
                    command = [sys.executable, "-m", "transferkit", "train", "--model", args.model, "--data", args.data,
                               "--regime", regime, "--output", str(out), "--processes", str(n), *overrides]  # fmt: skip
                    started = time.perf_counter()
                    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    seconds = time.perf_counter() - started
                    metrics = json.loads((out / "metrics.json").read_text())
                    runs[n].append({"seconds": seconds, "test": {k: v for k, v in metrics["test"].items() if isinstance(v, float)},
                                    "steps": [s["steps"] for s in metrics["stages"]],
                                    "ceiling_share": [s.get("ceiling_share") for s in metrics["stages"]],
                                    "model_gflops_per_second": [s.get("model_gflops_per_second") for s in metrics["stages"]]})  # fmt: skip
                    print(f"{regime} x{n} repeat {repeat + 1}: {seconds:.1f} s, test {runs[n][-1]['test'].get('accuracy')}", flush=True)
            summary = {n: {"median_seconds": statistics.median(r["seconds"] for r in rs), "test": rs[0]["test"], "steps": rs[0]["steps"],
                           "median_ceiling_share": statistics.median(r["ceiling_share"][-1] or 0 for r in rs),
                           "same_test_every_repeat": all(r["test"] == rs[0]["test"] for r in rs)} for n, rs in runs.items()}  # fmt: skip
            results["regimes"][regime] = {"runs": runs, "summary": summary}
    print("\n| regime | processes | median wall time | vs 1 process | test accuracy | test loss | optimizer steps | ceiling share |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for regime, r in results["regimes"].items():
        base = r["summary"][counts[0]]["median_seconds"]
        for n, s in r["summary"].items():
            print(f"| {regime} | {n} | {s['median_seconds']:.1f} s | {s['median_seconds'] / base:.2f}x | {s['test'].get('accuracy', float('nan')):.4f} "
                  f"| {s['test'].get('loss', float('nan')):.4f} | {s['steps']} | {s['median_ceiling_share']:.2f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
