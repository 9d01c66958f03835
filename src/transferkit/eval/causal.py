"""Test a causal LM: label scoring for classification; loss, perplexity, exact match and sample
answers for generation."""

from __future__ import annotations

import torch

from ..data.batching import make_loader
from ..data.tables import Examples
from ..tasks import LanguageModeling
from ..training.loop import Progress, evaluate
from .generation import exact_match, generate
from .metrics import classification_metrics
from .scoring import calibrated, label_scores

SAMPLES = 8  # sample answers kept for the report


def label_probabilities(model, texts: list[str], calibrate: bool, content_free: str = "N/A", progress: Progress | None = None) -> torch.Tensor:
    """(N, L) probability of each label, from the verbalisers' log-likelihoods (calibrated if asked)."""
    progress = progress or Progress()
    queries = [model.prompt.query_ids(model.tokenizer, t, model.max_length) for t in texts]
    progress.start("scoring labels", len(queries) * len(model.label_names))
    scores = label_scores(model, queries, progress=progress)
    progress.close()
    if calibrate:
        free = label_scores(model, [model.prompt.query_ids(model.tokenizer, content_free, model.max_length)])
        scores = calibrated(scores, free)
    return scores.softmax(-1)


def test_causal(model, examples: Examples, cfg, accelerator, progress: Progress | None = None) -> tuple[dict, dict]:
    """(test metrics, extra figures for metrics.json) of a causal LM on labelled or generation examples."""
    progress = progress or Progress()
    model.eval()
    if model.task == "classify":
        calibrate = cfg.icl.calibrate
        raw = label_probabilities(model, examples.inputs, False, progress=progress)
        extra = {"prompt": {"shots": len(model.demos), "prefix_tokens": len(model.prefix_ids()), "calibrated": calibrate}}
        if not calibrate:
            return _label_metrics(raw, examples.labels, model.label_names), extra
        free = label_scores(model, [model.prompt.query_ids(model.tokenizer, cfg.icl.content_free, model.max_length)])
        extra["test_uncalibrated"] = _label_metrics(raw, examples.labels, model.label_names)
        return _label_metrics(calibrated(raw.log(), free), examples.labels, model.label_names), extra

    loader = make_loader(model.encode(examples), 16, shuffle=False, seed=0, pad_id=model.pad_id)
    test = evaluate(model, loader, LanguageModeling(), accelerator, "fp32")
    chats = [x["messages"] for x in examples.inputs if "messages" in x][: cfg.lm.generate_examples]
    if not chats:
        return test, {"samples": []}
    prompts = [model.prompt_tokens(model.chat_prompt(model.demo_turns() + m[:-1])) for m in chats]
    progress.start("generating answers", len(prompts))
    answers = generate(model, prompts, cfg.lm.max_new_tokens, progress=progress)
    progress.close()
    references = [m[-1]["content"] for m in chats]
    test |= {"exact_match": exact_match(answers, references), "generated_examples": len(answers)}
    samples = [{"prompt": m[-2]["content"][:500], "reference": r, "generated": a} for m, r, a in zip(chats, references, answers)]
    return test, {"samples": samples[:SAMPLES]}


def _label_metrics(scores: torch.Tensor, labels: list[str], label_names: list[str]) -> dict:
    n = len(label_names)
    index = {name: i for i, name in enumerate(label_names)}
    confusion = torch.zeros(n, n, dtype=torch.long)
    for truth, predicted in zip(labels, scores.argmax(-1).tolist()):
        confusion[index[truth], predicted] += 1
    return classification_metrics(confusion, label_names)
