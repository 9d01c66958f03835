"""Catastrophic forgetting and its cure: full fine-tuning of SmolLM2 on Shakespeare at a high
learning rate, without and with replay of general prose (BBC News text) mixed into training.

    .venv/bin/python benchmarks/forgetting_replay.py                      # the default comparison
    .venv/bin/python benchmarks/forgetting_replay.py --steps 10 --json /tmp/r.json   # a quick look

Both runs use the same split, seed, steps and learning rate. Forgetting is the rise in perplexity
on held-out BBC News text (text that replay never shows); the task is perplexity on held-out
Shakespeare passages. The claim checked: replay at ratio 0.2 at least halves the rise, while the
Shakespeare perplexity stays within 10% of the run without replay.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(ratio: float, args, out: str) -> dict:
    import transferkit

    overrides = {
        "model.name": "smollm2-135m", "task": "generate", "data.name": "shakespeare", "regime": "full",
        "data.train_size": args.train_passages, "data.validation_size": 40, "data.test_size": args.test_passages,
        "model.max_length": 128, "train.lr": args.lr, "train.max_steps": args.steps, "train.batch_size": 8,
        "train.patience": None, "train.seed": 0, "lm.generate_examples": 0,
        "forgetting.corpus": "bbc-news-text", "forgetting.tokens": args.general_tokens,
        "replay.ratio": ratio, "output": out, "overwrite": True,
    }  # fmt: skip
    metrics = transferkit.train(None, overrides).metrics
    f = metrics["forgetting"]
    return {
        "replay_ratio": ratio,
        "shakespeare_perplexity": metrics["test"]["perplexity"],
        "general_perplexity_before": f["general_perplexity_before"],
        "general_perplexity_after": f["general_perplexity_after"],
        "general_rise": f["general_perplexity_after"] - f["general_perplexity_before"],
        "train_seconds": metrics["train_seconds"],
        "precision": metrics["precision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of batch 8 x 128 tokens (default: 150)")
    parser.add_argument("--lr", type=float, default=2e-4, help="a high rate for full fine-tuning (default: 2e-4)")
    parser.add_argument("--ratio", type=float, default=0.2, help="replay ratio of the second run (default: 0.2)")
    parser.add_argument("--train-passages", type=int, default=1000, help="Shakespeare passages to train on (default: 1000)")
    parser.add_argument("--test-passages", type=int, default=100, help="held-out Shakespeare passages (default: 100)")
    parser.add_argument("--general-tokens", type=int, default=8192, help="held-out BBC tokens for perplexity (default: 8192)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(ratio, args, os.path.join(tmp, f"replay-{ratio}")) for ratio in (0.0, args.ratio)]
    plain, replay = rows
    for row in rows:
        print(f"replay {row['replay_ratio']:.1f}: BBC perplexity {row['general_perplexity_before']:.2f} -> "
              f"{row['general_perplexity_after']:.2f} (rise {row['general_rise']:+.2f}); Shakespeare perplexity "
              f"{row['shakespeare_perplexity']:.2f}; {row['train_seconds']:.0f} s ({row['precision']})")
    rise_ratio = replay["general_rise"] / plain["general_rise"] if plain["general_rise"] > 0 else float("nan")
    task_change = replay["shakespeare_perplexity"] / plain["shakespeare_perplexity"] - 1
    print(f"replay keeps {100 * rise_ratio:.0f}% of the rise in general perplexity (claim: at most 50%); "
          f"Shakespeare perplexity {100 * task_change:+.1f}% against no replay (claim: within 10%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "runs": rows, "rise_kept": rise_ratio, "task_perplexity_change": task_change}, f, indent=2)


if __name__ == "__main__":
    main()
