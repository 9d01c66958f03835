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
    from .data.tables import warn

    run_dir = check_run_dir(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    failure = run_dir / "failure.json"
    if failure.is_file():
        warn(f"run '{run_dir}' did not finish ({_failure(failure)}); predicting with the last good weights it kept")
    try:
        model = load_saved_model(run_dir / "model")
    except UserError:
        raise
    except Exception as e:  # truncated weights, a missing tokenizer, a damaged config: all one message
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"the model in '{run_dir / 'model'}' cannot be loaded ({text}); the run folder is damaged: train it again") from None
    # A causal LM's label scores are calibrated as they were in testing.
    model.content_free = cfg.icl.content_free if cfg.icl.calibrate else None
    return model, cfg


def _failure(path: Path) -> str:
    import json

    try:
        return json.loads(path.read_text()).get("error", "it failed")
    except (ValueError, OSError, AttributeError):
        return "it failed"


def generate_text(run_dir: str | Path, prompt: str, max_new_tokens: int | None = None, device: torch.device | None = None) -> str:
    """The greedy answer of a finished generation run's model to `prompt` (through its chat template)."""
    from .eval.generation import generate

    model, cfg = load_run(run_dir)
    model.to(device)
    if getattr(model, "task", None) != "generate":
        raise UserError(f"'{run_dir}' holds a classifier; --prompt is for generation runs, use --text to label a text")
    ids = model.prompt_tokens(model.chat_prompt(model.demo_turns() + [{"role": "user", "content": prompt}]))
    return generate(model, [ids], max_new_tokens or cfg.lm.max_new_tokens)[0]


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
    if getattr(model, "task", None) == "classify":  # a causal LM: score each label's verbaliser
        from .eval.causal import label_probabilities

        return label_probabilities(model, inputs, model.content_free)
    items = _Indexed(model.encode(Examples(inputs, None)))
    probs = torch.empty(len(inputs), len(model.label_names))
    model.eval()
    device = next(model.parameters()).device
    for batch in make_loader(items, batch_size, shuffle=False, seed=0, pad_id=model.pad_id):
        index = batch.pop("index")
        probs[index] = model(**{k: v.to(device) for k, v in batch.items()}).float().softmax(-1).cpu()
    return probs


def predict(run_dir: str | Path, inputs: list) -> list[tuple[str, float]]:
    """(label, probability) for each input, with the model of a finished run."""
    model, _ = load_run(run_dir)
    best, index = predict_proba(model, inputs).max(-1)
    return [(model.label_names[i], p) for i, p in zip(index.tolist(), best.tolist())]


def evaluate_file(run_dir: str | Path, path: str, text_column: str | None = None, label_column: str | None = None) -> dict:
    """Test metrics of a finished run on a labelled CSV / JSONL file or image folder."""
    model, cfg = load_run(run_dir)
    accelerator = Accelerator()
    if getattr(model, "task", None) is not None:  # a causal LM
        from .data.generation import read_generation
        from .eval.causal import test_causal

        examples = (read_generation(path, text_column or cfg.data.text_column) if model.task == "generate"
                    else read_labelled(path, text_column or cfg.data.text_column, label_column or cfg.data.label_column))  # fmt: skip
        _check_labels(examples, model.label_names, path)
        return test_causal(model.to(accelerator.device), examples, cfg, accelerator)[0]
    examples = read_labelled(path, text_column or cfg.data.text_column, label_column or cfg.data.label_column)
    _check_labels(examples, model.label_names, path)
    loader = make_loader(model.encode(examples), 32, shuffle=False, seed=0, pad_id=model.pad_id)
    return evaluate(model.to(accelerator.device), loader, Classification(model.label_names), accelerator, "fp32")


def _check_labels(examples: Examples, labels: list[str], path: str) -> None:
    unknown = sorted(set(examples.labels or []) - set(labels))
    if unknown:
        raise UserError(f"label '{unknown[0]}' in '{path}' was never seen in training (the model knows: {', '.join(labels)})")
