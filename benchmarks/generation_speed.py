"""Greedy generation with SmolLM2: transferkit's decoder against transformers' `generate`, batched as
transferkit did before (8 prompts per call, left-padded, in input order).

    .venv/bin/python benchmarks/generation_speed.py                       # 64 prompts, 0 and 4 demonstrations
    .venv/bin/python benchmarks/generation_speed.py --prompts 16 --repeats 1   # a quick look

The prompts are built-in tweets and BBC News articles (cut to a few sentences) with an instruction
each, through the model's chat template, as `transferkit` asks them at test time and in `predict`
(with `--shots 4`: four solved examples as earlier chat turns, as `--regime icl` puts them). Both
sides decode greedily in fp32 to `--max-new-tokens`; the script checks that every answer agrees and
prints the time ratio, medians over --repeats. One prompt alone (`predict --prompt`) is timed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from icl_calibration import machine  # the same machine description (CPU flags, threads, versions)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ASKS = ["Summarise this in one sentence:", "What is the topic of this text? Answer in two words:",
        "Rewrite this more politely:", "List the people or places named here:"]  # fmt: skip


def prompts(model, n: int, shots: int) -> list[list[int]]:
    from transferkit.data.builtin import read_builtin

    texts = [t for name in ("tweet-sentiment", "bbc-news") for t in read_builtin(name).inputs[: n]]
    texts = [". ".join(t.split(". ")[:3]) for t in texts][:: max(1, len(texts) // n)][:n]
    demos = [[{"role": "user", "content": f"{ASKS[0]}\n{t}"}, {"role": "assistant", "content": t.split(". ")[0][:80]}]
             for t in texts[-shots:]] if shots else []  # fmt: skip
    turns = [m for pair in demos for m in pair]
    return [model.prompt_tokens(model.chat_prompt(turns + [{"role": "user", "content": f"{ASKS[i % len(ASKS)]}\n{t}"}]))
            for i, t in enumerate(texts)]  # fmt: skip


def before(model, ids: list[list[int]], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """transferkit's generation before this change: transformers' generate, 8 prompts per call."""
    import torch

    hf, pad, texts = model.hf, model.pad_id, []
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        width = max(len(p) for p in batch)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        out = hf.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                          pad_token_id=pad, eos_token_id=model.tokenizer.eos_token_id)  # fmt: skip
        texts += model.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [t.strip() for t in texts]


def timed(fn, repeats: int) -> tuple[list[str], list[float]]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        answers = fn()
        times.append(time.perf_counter() - started)
    return answers, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64, help="prompts answered (default: 64)")
    parser.add_argument("--shots", default="0,4", help="demonstrations before each prompt, comma-separated (default: 0,4)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="the answer's length limit (default: 64, lm.max_new_tokens)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each side (default: 3)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch

    from transferkit.eval.generation import generate
    from transferkit.models.causal import load_causal_lm

    torch.set_num_threads(os.cpu_count())
    model = load_causal_lm("smollm2-135m", "generate", None, 1024).eval()
    out = {"machine": machine(), "rows": []}
    for shots in [int(k) for k in args.shots.split(",")]:
        ids = prompts(model, args.prompts, shots)
        cases = [("batch", ids), ("one prompt", ids[:1])]
        for name, batch in cases:
            times = {"before": [], "transferkit": []}
            for _ in range(args.repeats):  # alternate, so that machine noise falls on both
                old, t = timed(lambda: before(model, batch, args.max_new_tokens), 1)
                times["before"] += t
                new, t = timed(lambda: generate(model, batch, args.max_new_tokens), 1)
                times["transferkit"] += t
            row = {"case": name, "shots": shots, "prompts": len(batch), "prompt_tokens": round(statistics.mean(map(len, batch))),
                   "answer_tokens": round(statistics.mean(len(model.tokenizer(a)["input_ids"]) for a in new)),
                   "before_s": statistics.median(times["before"]), "transferkit_s": statistics.median(times["transferkit"]),
                   "all_before_s": times["before"], "all_transferkit_s": times["transferkit"],
                   "identical": sum(a == b for a, b in zip(old, new))}  # fmt: skip
            row["speedup"] = row["before_s"] / row["transferkit_s"]
            out["rows"].append(row)
            print(f"{name:<10} {shots} shots, {row['prompts']:>3} prompts of {row['prompt_tokens']} tokens: before {row['before_s']:.1f} s, "
                  f"transferkit {row['transferkit_s']:.1f} s (medians of {args.repeats}): {row['speedup']:.2f}x; "
                  f"identical answers {row['identical']}/{len(batch)}", flush=True)  # fmt: skip
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
