"""In-context classification with SmolLM2: the shared demonstration prefix computed once and its
key/value cache reused for every query, against scoring every full prompt from scratch.

    .venv/bin/python benchmarks/icl_prefix_cache.py                       # 200 test tweets, k = 8: both ways
    .venv/bin/python benchmarks/icl_prefix_cache.py --queries 20 --repeats 1   # a quick look

Both paths score exactly the same token ids in fp32. The reference scores each (query, label) row's
full prompt, rows batched into model calls under a token budget; transferkit computes the prefix
once and each query once for all of its labels. The script checks that every prediction agrees
and prints the time ratio, medians over --repeats. Accuracy, every prompt layout and calibration
mode: icl_calibration.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from icl_calibration import machine  # the same machine description (CPU flags, threads, versions)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def setup(dataset: str, shots: str, test_size: int, max_length: int):
    """The model with its demonstrations chosen exactly as `transferkit train --regime icl` does."""
    import torch

    import transferkit
    from transferkit import tasks
    from transferkit.methods import icl
    from transferkit.models import load_model
    from transferkit.runs import seed_everything

    cfg = transferkit.load_config(None, {"model.name": "smollm2-135m", "data.name": dataset, "regime": "icl",
                                         "icl.shots": shots, "data.test_size": test_size, "model.max_length": max_length})  # fmt: skip
    seed_everything(0)
    task = tasks.make("causal", cfg)
    splits = task.read(cfg.data, cfg.train.seed)
    model = load_model(cfg, task).eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    icl.prepare(model, task, splits, cfg)
    return cfg, model, splits


def timed_scores(model, splits, cached: bool):
    from transferkit.eval.scoring import label_scores

    queries = [model.prompt.query_ids(model.tokenizer, t, model.max_length) for t in splits.test.inputs]
    started = time.perf_counter()
    scores = label_scores(model, queries, cached=cached)
    return scores, time.perf_counter() - started


def speed(args) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count())
    _, model, splits = setup("tweet-sentiment", "8", args.queries, args.max_length)
    times = {"cached": [], "naive": []}
    for _ in range(args.repeats):
        for name in ("cached", "naive"):  # alternate, so that machine noise falls on both
            scores, seconds = timed_scores(model, splits, name == "cached")
            times[name].append(seconds)
            if name == "cached":
                cached_scores = scores
            else:
                naive_scores = scores
    agree = (cached_scores.argmax(-1) == naive_scores.argmax(-1)).float().mean().item()
    result = {
        "queries": len(splits.test), "shots": len(model.demos), "prefix_tokens": len(model.prefix_ids()),
        "answer_tokens": [len(a) for a in model.prompt.answer_ids(model.tokenizer)],
        "cached_s": statistics.median(times["cached"]), "naive_s": statistics.median(times["naive"]),
        "all_cached_s": times["cached"], "all_naive_s": times["naive"],
        "prediction_agreement": agree, "max_score_difference": (cached_scores - naive_scores).abs().max().item(),
    }
    result["speedup"] = result["naive_s"] / result["cached_s"]
    print(f"k = {result['shots']} ({result['prefix_tokens']} prefix tokens), {result['queries']} queries: "
          f"cached {result['cached_s']:.1f} s, naive {result['naive_s']:.1f} s (medians of {args.repeats}): "
          f"{result['speedup']:.1f}x faster; predictions agree on {100 * agree:.1f}% "
          f"(largest score difference {result['max_score_difference']:.2e})")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200, help="test examples scored (default: 200)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each path (default: 3)")
    parser.add_argument("--max-length", type=int, default=64, help="tokens kept of each text (default: 64)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    out = {"machine": machine(), "speed": speed(args)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
