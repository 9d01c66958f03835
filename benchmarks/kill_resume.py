"""kill -9 a training run at random moments, start it again each time, and check that it ends where
a run never stopped ends: the same test metrics and the same weights (a hash of the saved model).

One uninterrupted run first (the reference, timed). Then fresh runs of the same command, each killed
(SIGKILL) and started again until it finishes, until `--kills` kills have been made in all. Each kill
comes at a random moment of the attempt, uniform over what the reference says is left to do: its
fixed part (start, load, test, save) plus the share of the training loop that the last checkpoint
had not done. An attempt that made no progress over three kills in a row is let finish. After every kill the run's .partial folder is checked: the
checkpoint that checkpoint.json names must be complete and readable (every file), and nothing but a
.tmp folder may be half-written. Each finished run's metrics and weights are compared.

    .venv/bin/python benchmarks/kill_resume.py                                   # MiniLM full on BBC News, 20 kills
    .venv/bin/python benchmarks/kill_resume.py --kills 3 data.train_size=100
    .venv/bin/python benchmarks/kill_resume.py --model ./my-model --data my.csv --regime lora

Exit status 1 when any run ends elsewhere than the reference. Needs bash scripts/install.sh.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from task_heads import cpu_flags  # noqa: E402  (the vector instructions, as every benchmark prints)


def weights_hash(run: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((run / "model").rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def check_checkpoint(staging: Path) -> tuple[str, int]:
    """What the kill left ('none', or where the named checkpoint is) and the optimizer steps done by then
    (of a one-stage run). Raises if the named checkpoint, or any folder named as one, is not complete."""
    import torch
    from safetensors.torch import load_file

    pointer = staging / "checkpoint.json"
    if not pointer.is_file():
        return "none", 0
    folder = staging / json.loads(pointer.read_text())["last"]
    state = json.loads((folder / "state.json").read_text())
    load_file(folder / "weights.safetensors")
    load_file(folder / "rng.safetensors")
    if state["loop"]:
        load_file(folder / "best.safetensors")
        torch.load(folder / "optimizer.pt", weights_only=True)
        torch.load(folder / "scheduler.pt", weights_only=True)
    for entry in staging.iterdir():  # anything named like a checkpoint is a complete one
        if entry.is_dir() and entry.name.startswith("checkpoint-"):
            json.loads((entry / "state.json").read_text())
    finished = state["summary"]["stages"]
    if state["loop"]:
        return f"stage {state['stage'] + 1}, step {state['loop']['steps']}", sum(s["steps"] for s in finished) + state["loop"]["steps"]
    done = sum(s["steps"] for s in finished)
    return ("training done" if state["stage"] >= state["stages"] else f"stage {state['stage'] + 1} start"), done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data", default="bbc-news")
    parser.add_argument("--regime", default="full")
    parser.add_argument("--kills", type=int, default=20, help="kills in all")
    parser.add_argument("--runs", type=int, default=12, help="at most this many runs")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("overrides", nargs="*", help="section.key=value for every run "
                        "(default: data.train_size=300 train.epochs=1 train.checkpoint_every_steps=3)")  # fmt: skip
    args = parser.parse_args()
    overrides = args.overrides or ["data.train_size=300", "train.epochs=1", "train.checkpoint_every_steps=3"]
    print(f"CPU flags: {cpu_flags()}", flush=True)
    rng = random.Random(args.seed)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "transferkit", "train", "--model", args.model, "--data", args.data,
                "--regime", args.regime, "--output", str(out), *overrides]  # fmt: skip

    results = {"cpu": cpu_flags(), "command": command(Path("OUT"))[1:], "runs": []}
    with tempfile.TemporaryDirectory(prefix="tk-kill-") as tmp:
        reference = Path(tmp) / "reference"
        started = time.perf_counter()
        subprocess.run(command(reference), check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        duration = time.perf_counter() - started
        reference_metrics = json.loads((reference / "metrics.json").read_text())
        expected = (reference_metrics["test"], weights_hash(reference))
        total_steps = sum(s["steps"] for s in reference_metrics["stages"])
        loop_seconds = sum(s["seconds"] for s in reference_metrics["stages"])
        fixed_seconds = duration - loop_seconds
        print(f"reference run: {duration:.1f} s, test {expected[0].get('accuracy', expected[0])}", flush=True)
        results["reference_seconds"] = duration
        failures, made = 0, 0
        for r in range(args.runs):
            if made >= args.kills:
                break
            out = Path(tmp) / f"run-{r}"
            staging = out.with_name(out.name + ".partial")
            kills, done, stuck = [], 0, 0
            while made < args.kills and stuck < 3:
                moment = rng.uniform(0.05, 1.0) * (fixed_seconds + (1 - done / total_steps) * loop_seconds)
                process = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    process.wait(timeout=moment)
                    break  # it finished before the kill came
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                left, now_done = check_checkpoint(staging)
                stuck = stuck + 1 if now_done <= done and left == (kills[-1]["left"] if kills else "none") else 0
                done = now_done
                kills.append({"at_seconds": round(moment, 1), "left": left})
                made += 1
            if not (out / "metrics.json").is_file():
                subprocess.run(command(out), check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            got = (json.loads((out / "metrics.json").read_text())["test"], weights_hash(out))
            same_metrics, same_weights = got[0] == expected[0], got[1] == expected[1]
            failures += not (same_metrics and same_weights)
            results["runs"].append({"kills": kills, "same_metrics": same_metrics, "same_weights": same_weights})
            left = ", ".join(k["left"] for k in kills)
            print(f"run {r + 1}: killed at {[k['at_seconds'] for k in kills]} s, left: {left}; "
                  f"same metrics {same_metrics}, same weights {same_weights}", flush=True)  # fmt: skip
    runs = len(results["runs"])
    print(f"{made} kills over {runs} runs: {runs - failures} of {runs} runs ended bit for bit where the reference did")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
