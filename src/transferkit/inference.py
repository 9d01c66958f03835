"""Use a finished run: predict labels for new texts, evaluate on new labelled data."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from .config import RunConfig, load_config
from .data.batching import make_loader, tokenize
from .data.tables import read_examples
from .errors import UserError
from .models.text import TextClassifier, label_names_of, load_saved_classifier
from .tasks import Classification
from .training.loop import evaluate


def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "model").is_dir() or not (run_dir / "config.yaml").is_file():
        raise UserError(f"'{run_dir}' is not a run folder (no model/ or config.yaml); train one with: transferkit train")
    return run_dir


def load_run(run_dir: str | Path) -> tuple[TextClassifier, RunConfig]:
    """The trained model of a run folder (fp32, eval mode) and the config it was trained with."""
    run_dir = check_run_dir(run_dir)
    return load_saved_classifier(run_dir / "model"), load_config(run_dir / "config.yaml")


@torch.no_grad()
def predict_proba(model: TextClassifier, texts: list[str], max_length: int, batch_size: int = 32) -> torch.Tensor:
    """Class probabilities (N, num_labels) in input order, computed in fp32 (as any plain load would)."""
    items = [{"input_ids": ids, "index": i} for i, ids in enumerate(tokenize(model.tokenizer, texts, max_length))]
    probs = torch.empty(len(texts), len(label_names_of(model)))
    model.eval()
    for batch in make_loader(items, batch_size, shuffle=False, seed=0, pad_id=model.tokenizer.pad_token_id or 0):
        logits = model(batch["input_ids"], batch["attention_mask"])
        probs[batch["index"]] = logits.float().softmax(-1)
    return probs


def predict(run_dir: str | Path, texts: list[str]) -> list[tuple[str, float]]:
    """(label, probability) for each text, with the model of a finished run."""
    model, cfg = load_run(run_dir)
    probs = predict_proba(model, texts, cfg.model.max_length)
    labels = label_names_of(model)
    best, index = probs.max(-1)
    return [(labels[i], p) for i, p in zip(index.tolist(), best.tolist())]


def evaluate_file(run_dir: str | Path, path: str, text_column: str | None = None, label_column: str | None = None) -> dict:
    """Test metrics of a finished run on a labelled CSV / JSONL file."""
    model, cfg = load_run(run_dir)
    examples = read_examples(path, text_column or cfg.data.text_column, label_column or cfg.data.label_column)
    labels = label_names_of(model)
    unknown = sorted(set(examples.labels) - set(labels))
    if unknown:
        raise UserError(f"label '{unknown[0]}' in '{path}' was never seen in training (the model knows: {', '.join(labels)})")
    index = {name: i for i, name in enumerate(labels)}
    ids = tokenize(model.tokenizer, examples.texts, cfg.model.max_length)
    items = [{"input_ids": x, "labels": index[y]} for x, y in zip(ids, examples.labels)]
    loader = make_loader(items, 32, shuffle=False, seed=0, pad_id=model.tokenizer.pad_token_id or 0)
    accelerator = Accelerator()
    return evaluate(model.to(accelerator.device), loader, Classification(labels), accelerator, "fp32")
