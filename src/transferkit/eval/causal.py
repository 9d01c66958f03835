"""Test a causal LM: label scoring for classification; loss, perplexity, exact match and sample
answers for generation."""

from __future__ import annotations

import torch

from ..data.batching import make_loader
from ..data.examples import Examples
from ..tasks import LanguageModeling
from ..training.loop import Progress, evaluate
from .generation import exact_match, generate
from .metrics import classification_metrics
from .scoring import calibrated, label_scores

SAMPLES = 8  # sample answers kept for the report


def verbaliser_scores(model, texts: list[str], progress: Progress | None = None) -> torch.Tensor:
    """(N, L) log-likelihood of each label's verbaliser after the prompt and each text."""
    progress = progress or Progress()
    queries = [model.prompt.query_ids(model.tokenizer, t, model.max_length) for t in texts]
    progress.start("scoring labels", len(queries) * len(model.label_names))
    scores = label_scores(model, queries, progress=progress)
    progress.close()
    return scores


def label_probabilities(model, texts: list[str], content_free: str | None = None, progress: Progress | None = None) -> torch.Tensor:
    """(N, L) probability of each label; calibrated against `content_free` when one is given."""
    scores = verbaliser_scores(model, texts, progress)
    if content_free is not None:
        scores = calibrated(scores, verbaliser_scores(model, [content_free]))
    return scores.softmax(-1)


def test_causal(model, examples: Examples, cfg, accelerator, progress: Progress | None = None) -> tuple[dict, dict]:
    """(test metrics, extra figures for metrics.json) of a causal LM on labelled or generation examples."""
    progress = progress or Progress()
    model.eval()
    if model.task == "classify":
        calibrate = cfg.icl.calibrate
        scores = verbaliser_scores(model, examples.inputs, progress)
        extra = {"prompt": {"shots": len(model.demos), "prefix_tokens": len(model.prefix_ids()), "calibrated": calibrate}}
        if calibrate:  # both results: what calibration changed is worth seeing
            extra["test_uncalibrated"] = _label_metrics(scores, examples.labels, model.label_names)
            scores = calibrated(scores, verbaliser_scores(model, [cfg.icl.content_free]))
        return _label_metrics(scores, examples.labels, model.label_names), extra

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
