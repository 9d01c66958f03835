"""Use a finished run: predict for new inputs, evaluate on new labelled data, answer a prompt.

Everything task-specific is the saved task's (tasks/): how it reads a file, encodes, tests, predicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator

from .config import RunConfig, load_config
from .data.examples import Examples
from .errors import UserError
from .models import load_saved_model
from .tasks import Context
from .training.loop import Progress


def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "model").is_dir() or not (run_dir / "config.yaml").is_file():
        raise UserError(f"'{run_dir}' is not a run folder (no model/ or config.yaml); train one with: transferkit train")
    return run_dir


def load_run(run_dir: str | Path) -> tuple[torch.nn.Module, RunConfig]:
    """The trained model of a run folder (fp32, eval mode; `model.task` its task) and its config."""
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
    return model, cfg


def _failure(path: Path) -> str:
    try:
        return json.loads(path.read_text()).get("error", "it failed")
    except (ValueError, OSError, AttributeError):
        return "it failed"


def generate_text(run_dir: str | Path, prompt: str, max_new_tokens: int | None = None, device: torch.device | None = None) -> str:
    """The greedy answer of a finished generation run's model to `prompt` (through its chat template)."""
    model, cfg = load_run(run_dir)
    model.to(device)
    if not hasattr(model.task, "answer"):
        raise UserError(f"'{run_dir}' holds a {model.task.name} model; --prompt is for generation runs, use --text or --input")
    return model.task.answer(model, [prompt], max_new_tokens or cfg.lm.max_new_tokens)[0]


def predict_proba(model, inputs: list, batch_size: int = 32) -> torch.Tensor:
    """Class probabilities (N, num_labels) in input order, in fp32 (as any plain load would compute them).

    `model` comes from `load_saved_model` / `load_run`; `inputs` are texts for a text model, image
    files or uint8 arrays for an image model.
    """
    return model.task.probabilities(model, Examples(list(inputs), None), batch_size)


def predict(run_dir: str | Path, inputs: list) -> list[tuple[str, float]]:
    """(label, probability) for each input, with the model of a finished classification run."""
    model, _ = load_run(run_dir)
    best, index = predict_proba(model, inputs).max(-1)
    return [(model.task.label_names[i], p) for i, p in zip(index.tolist(), best.tolist())]


def predict_columns(model, cfg: RunConfig, examples: Examples, batch_size: int = 32, detail: bool = False) -> dict[str, list]:
    """The columns `transferkit predict` adds for `examples`, as the run's task defines them (with `detail`,
    also every label's probability, for --json)."""
    return model.task.predict(model, examples, Context(cfg, Accelerator(), "fp32", Progress(), batch_size), detail)


def evaluate_file(run_dir: str | Path, path: str, text_column: str | None = None, label_column: str | None = None,
                  pair_column: str | None = None) -> dict:  # fmt: skip
    """Test metrics of a finished run on a labelled file (or image folder), as its task measures them."""
    from dataclasses import replace

    model, cfg = load_run(run_dir)
    data = replace(cfg.data, text_column=text_column or cfg.data.text_column, label_column=label_column or cfg.data.label_column,
                   pair_column=pair_column or cfg.data.pair_column)  # fmt: skip
    task = model.task
    examples = task.read_file(path, data)
    accelerator = Accelerator()
    model.to(accelerator.device)
    items = task.encode(model, examples)
    return task.test(model, examples, items, Context(cfg, accelerator, "fp32", Progress()))[0]
