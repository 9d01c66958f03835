"""Use a finished run: predict labels for new texts, evaluate on new labelled data."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from .config import RunConfig, load_config
from .data.batching import make_loader
from .data.splits import read_labelled
from .data.tables import Examples
from .errors import UserError
from .models import load_saved_model
from .tasks import Classification
from .training.loop import evaluate


def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "model").is_dir() or not (run_dir / "config.yaml").is_file():
        raise UserError(f"'{run_dir}' is not a run folder (no model/ or config.yaml); train one with: transferkit train")
    return run_dir


def load_run(run_dir: str | Path) -> tuple[torch.nn.Module, RunConfig]:
    """The trained model of a run folder (fp32, eval mode) and the config it was trained with."""
    run_dir = check_run_dir(run_dir)
    return load_saved_model(run_dir / "model"), load_config(run_dir / "config.yaml")


class _Indexed(torch.utils.data.Dataset):
    """Items with their position, so that predictions come back in input order whatever the batching."""

    def __init__(self, items):
        self.items = items
        self.lengths = getattr(items, "lengths", None) or [len(item.get("input_ids", ())) or 1 for item in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {**self.items[i], "index": i}


@torch.no_grad()
def predict_proba(model, inputs: list, batch_size: int = 32) -> torch.Tensor:
    """Class probabilities (N, num_labels) in input order, computed in fp32 (as any plain load would).

    `inputs` are texts for a text model; image files or uint8 arrays for an image model.
    """
    items = _Indexed(model.encode(Examples(inputs, None)))
    probs = torch.empty(len(inputs), len(model.label_names))
    model.eval()
    for batch in make_loader(items, batch_size, shuffle=False, seed=0, pad_id=model.pad_id):
        index = batch.pop("index")
        probs[index] = model(**batch).float().softmax(-1)
    return probs


def predict(run_dir: str | Path, inputs: list) -> list[tuple[str, float]]:
    """(label, probability) for each input, with the model of a finished run."""
    model, _ = load_run(run_dir)
    best, index = predict_proba(model, inputs).max(-1)
    return [(model.label_names[i], p) for i, p in zip(index.tolist(), best.tolist())]


def evaluate_file(run_dir: str | Path, path: str, text_column: str | None = None, label_column: str | None = None) -> dict:
    """Test metrics of a finished run on a labelled CSV / JSONL file or image folder."""
    model, cfg = load_run(run_dir)
    examples = read_labelled(path, text_column or cfg.data.text_column, label_column or cfg.data.label_column)
    labels = model.label_names
    unknown = sorted(set(examples.labels) - set(labels))
    if unknown:
        raise UserError(f"label '{unknown[0]}' in '{path}' was never seen in training (the model knows: {', '.join(labels)})")
    loader = make_loader(model.encode(examples), 32, shuffle=False, seed=0, pad_id=model.pad_id)
    accelerator = Accelerator()
    return evaluate(model.to(accelerator.device), loader, Classification(labels), accelerator, "fp32")
