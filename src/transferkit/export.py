"""Export a finished run's model for serving without transferkit, checked against the run first.

    merged   LoRA / prompt-tuning runs: a plain model folder (merge.py), with its model card
    onnx     encoders and image models: model.onnx (torch.onnx, batch and sequence axes dynamic)
             beside the tokenizer or the image settings
    gguf     refused: no converter installs from PyPI (GGUF_REFUSAL says why)

Before an export is kept, the exported model labels the run's own test split, read back the way
a user would read it (plain transformers, or onnxruntime), and its probabilities are compared with
transferkit's predictions from the run's model: the largest difference must stay within TOLERANCE.
The folder is built beside --output and renamed into place, so a failed check leaves nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import folders
from .errors import UserError

FORMATS = ("merged", "onnx", "gguf")
TOLERANCE = 1e-4  # the largest probability difference an export may show, in fp32
EXPORT_FILE = "export.json"  # marks a folder as an export, and lists the files it wrote
GGUF_REFUSAL = (
    "GGUF export is not available: the converter that writes GGUF from a model folder (llama.cpp's "
    "convert_hf_to_gguf.py) does not install from PyPI (the gguf package reads and writes the format but "
    "converts no model; llama-cpp-python carries the script only inside its source archive); export "
    "--format merged and run that script from a llama.cpp checkout on the folder"
)


@dataclass
class Check:
    """How the exported model's predictions compare with the run's own."""

    examples: int
    """Test examples compared (learned test tokens, for a generation run)."""
    max_difference: float
    """Largest absolute difference of a probability."""
    identical: int
    """Examples whose predicted label (next token, for generation) is the same."""
    unit: str = "test examples"

    @property
    def identical_share(self) -> float:
        return self.identical / max(self.examples, 1)


@dataclass
class Export:
    folder: Path
    format: str
    check: Check


def export(run_dir: str | Path, format: str, output: str | Path, overwrite: bool = False, batch_size: int = 32) -> Export:
    """Write the run's model in `format` to `output`, once it predicts what the run predicts.

    Raises:
        UserError: a format this run's model cannot take, an --output that is not ours to write,
            or an export whose predictions differ from the run's (then nothing is written).
    """
    from .card import folder_kind
    from .config import load_config
    from .inference import check_run_dir, load_run

    if format == "gguf":
        raise UserError(GGUF_REFUSAL)
    if format not in FORMATS:
        raise UserError(f"unknown export format '{format}'; choose merged or onnx (gguf: see --help)")
    run_dir = check_run_dir(run_dir)
    if not folders.is_finished(run_dir):
        raise UserError(f"'{run_dir}' holds no finished run (no metrics.json); export a run that finished")
    _check_format(folder_kind(run_dir / "model"), load_config(run_dir / "config.yaml").regime, format)
    output = Path(output)
    check_output(output, overwrite)
    model, cfg = load_run(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    test = _test_examples(model, cfg)
    reference = _Predictions(model, test, batch_size)  # the run's own, before anything is merged in place
    result: dict = {}

    def write(folder: Path) -> None:
        if format == "merged":
            _write_merged(model, folder)
            check = reference.compare(_merged_predictions(folder, model, test, batch_size))
        else:
            _write_onnx(model, folder, test)
            check = reference.compare(_onnx_predictions(folder, model, test, batch_size))
        if not check.max_difference <= TOLERANCE:
            raise UserError(f"the exported model does not predict what the run predicts (largest probability difference "
                            f"{check.max_difference:.2e} on {check.examples} {check.unit}, over {TOLERANCE:g}); nothing was written")  # fmt: skip
        _write_card(folder, cfg, metrics, run_dir, output, format, check)
        written = sorted(p.name for p in folder.iterdir())
        folders.write_text(folder / EXPORT_FILE, json.dumps({"transferkit_export": format, "run": str(run_dir.resolve()), "check": asdict(check),
                                                             "files": written}, indent=2))  # fmt: skip
        result["check"] = check

    output.parent.mkdir(parents=True, exist_ok=True)
    folders.replace_dir(write, output)
    return Export(output, format, result["check"])


# --- what may be written where -------------------------------------------------------------------


def foreign_files(folder: Path) -> list[str] | None:
    """What in a folder `transferkit export` wrote it did not write ([] for an untouched export); None
    for a folder that is no export at all."""
    try:
        record = json.loads((folder / EXPORT_FILE).read_text(encoding="utf-8"))
        ours = set(record["files"]) | {EXPORT_FILE}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sorted(p.name for p in folder.iterdir() if p.name not in ours) if "transferkit_export" in record else None


def check_output(target: Path, overwrite: bool) -> None:
    """Refuse an --output that is not ours to replace: the current folder or one above it, a file, a
    folder of the user's, a place inside a run or comparison, or an earlier export without --overwrite."""
    resolved, cwd = target.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UserError(f"--output '{target}' is the current folder or one above it; name a new folder, e.g. exports/my-model")
    if target.exists() and not target.is_dir():
        raise UserError(f"--output '{target}' is an existing file; name a folder that does not exist yet")
    inside = next((p for p in [resolved, *resolved.parents] if folders.is_run(p) or folders.is_comparison(p)), None)
    if inside is not None:
        raise UserError(f"--output '{target}' is inside the transferkit folder '{inside}', which holds only its own files; "
                        "name a folder outside it")  # fmt: skip
    if target.is_dir() and any(target.iterdir()):
        foreign = foreign_files(target)
        if foreign is None or foreign:
            what = f"holds {foreign[0]}, which transferkit did not write" if foreign else "is a folder that transferkit export did not write"
            raise UserError(f"--output '{target}' {what}; transferkit never replaces it, with or without --overwrite: name a new folder")
        if not overwrite:
            raise UserError(f"'{target}' already holds an export; pass --overwrite to replace it or choose another --output")
    parent = next(p for p in [target.parent, *target.parent.parents] if p.exists())
    if not os_writable(parent):
        raise UserError(f"cannot write into '{parent}' (permission denied); choose another --output")


def os_writable(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK | os.X_OK)


def _check_format(kind: str, regime: str, format: str) -> None:
    """The formats a run's model folder (of card.folder_kind `kind`) can take, or a one-line reason."""
    causal = kind in ("causal", "causal-peft", "icl")
    if format == "merged":
        if kind == "image":
            raise UserError("this image run's model folder is already plain (LoRA updates are merged in when an image model is saved); "
                            "use it as it is, or export --format onnx")  # fmt: skip
        if kind == "icl":
            raise UserError("an icl run trains no weights: its model is the base model asked with demonstrations (lm.json); nothing to merge")
        if kind not in ("peft", "causal-peft"):
            raise UserError(f"a {regime} run's model folder is already a plain model folder; nothing to merge (merged is for lora and prompt runs)")
        if kind == "causal-peft" and regime == "prompt":
            raise UserError("a causal LM's soft prompt cannot become plain weights: its virtual tokens come before the chat "
                            "template's, which a plain tokenizer does not add; use the adapter folder with peft")  # fmt: skip
    if format == "onnx" and causal:
        raise UserError("ONNX export is for encoders and image models; for a causal LM export --format merged "
                        "(a plain transformers folder that optimum or llama.cpp's converter read)")  # fmt: skip


def _test_examples(model, cfg):
    """The run's test split, read by its task as training read it (the same seeded split)."""
    import copy

    try:
        return copy.copy(model.task).read(cfg.data, cfg.train.seed).test  # a copy: reading sets the task's labels
    except UserError as e:
        raise UserError(f"an export is checked on the run's test split, which cannot be read: {e}") from None


# --- predictions: the run's, and the export's -----------------------------------------------------


class _Predictions:
    """The run's own predictions on the test split (what its task scores: class probabilities, label
    probabilities, regression values), or for a generation run the model itself, whose next-token
    probabilities are compared batch by batch."""

    def __init__(self, model, test, batch_size: int):
        self.generate = not hasattr(model.task, "scores")
        if self.generate:
            import copy

            self.model, self.items = copy.deepcopy(model), model.task.encode(model, test)
        else:
            self.task, self.probs = model.task, model.task.scores(model, test, batch_size)  # (N, L)

    def compare(self, other) -> Check:
        if self.generate:
            return _compare_language_models(self.model, other, self.items)
        diff = (other - self.probs).abs().max().item() if len(self.probs) else 0.0
        return Check(len(self.probs), diff, self.task.same_predictions(other, self.probs))


@torch.no_grad()
def _compare_language_models(a, b, items) -> Check:
    """Next-token probabilities of two causal LMs on the learned tokens of `items`."""
    from .data.batching import make_loader

    largest, same, count = 0.0, 0, 0
    for batch in make_loader(items, 8, shuffle=False, seed=0, pad_id=a.pad_id):
        learned = batch["labels"][:, 1:] != -100
        p, q = (m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[:, :-1].float().softmax(-1)[learned] for m in (a, b))
        largest = max(largest, (p - q).abs().max().item() if len(p) else 0.0)
        same += int((p.argmax(-1) == q.argmax(-1)).sum())
        count += len(p)
    return Check(count, largest, same, "learned test tokens (next-token probabilities)")


def _merged_predictions(folder: Path, model, test, batch_size: int):
    """The merged folder's predictions, loaded as a user loads it (plain transformers)."""
    if model.kind == "causal":  # transferkit's scoring over the plain folder
        from .models.causal import load_saved

        merged = load_saved(folder)
        merged.task = model.task
        return merged if not hasattr(model.task, "scores") else model.task.scores(merged, test, batch_size)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def run(rows):
        texts, pairs = zip(*rows)
        return hf(**tokenizer(list(texts), None if test.pairs is None else list(pairs), truncation=True, padding=True, return_tensors="pt")).logits

    return _batched(_rows(test), batch_size, run, model.task.activation)


def _onnx_predictions(folder: Path, model, test, batch_size: int):
    """model.onnx's predictions through onnxruntime, on inputs made as the folder's card says."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if model.modality == "image":
        items = model.encode(_unlabelled(test), None)  # transferkit's evaluation view, as vision.json describes it

        def run_images(indices: list[int]) -> torch.Tensor:
            pixels = torch.stack([items[i]["pixel_values"] for i in indices]).numpy()  # (B, 3, S, S)
            return torch.from_numpy(session.run(["logits"], {"pixel_values": pixels})[0])

        return _batched(list(range(len(items))), batch_size, run_images, model.task.activation)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)

    def run(rows):
        texts, pairs = zip(*rows)
        inputs = tokenizer(list(texts), None if test.pairs is None else list(pairs), truncation=True, padding=True, return_tensors="np")
        return torch.from_numpy(session.run(["logits"], {name: inputs[name] for name in names})[0])

    return _batched(_rows(test), batch_size, run, model.task.activation)


@torch.no_grad()
def _batched(inputs: list, batch_size: int, logits, activation) -> torch.Tensor:
    """The task's `activation` (softmax, sigmoid, none) of `logits(batch)` over `inputs` in batches: (N, L) fp32."""
    parts = [activation(logits(inputs[i : i + batch_size]).float()) for i in range(0, len(inputs), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0)


def _rows(examples) -> list[tuple[str, str | None]]:
    """(text, second text or None) of each example."""
    pairs = list(examples.pairs) if examples.pairs is not None else [None] * len(examples)
    return list(zip(list(examples.inputs), pairs))


def _unlabelled(examples):
    from .data.examples import Examples

    return Examples(list(examples.inputs), None, pairs=examples.pairs)


# --- writing ---------------------------------------------------------------------------------------


def _write_merged(model, folder: Path) -> None:
    """LoRA merged into the weights (or the soft prompt folded into tokens), saved as the run saved its
    model: a plain model folder (with labels.json, or a causal LM's lm.json)."""
    from .merge import merge_adapter

    model.hf, model.tokenizer = merge_adapter(model.hf, model.tokenizer)
    model.save(folder)
    folders.follow_umask(folder)


def _write_onnx(model, folder: Path, test) -> None:
    """model.onnx with dynamic batch (and sequence) axes, and what a user needs to feed it."""
    from .merge import is_adapter, merge_adapter

    if model.modality == "image":
        net, names = _ImageLogits(model.net.eval()), ["pixel_values"]
        items = model.encode(_unlabelled(test), None)
        example = (torch.stack([items[i % len(items)]["pixel_values"] for i in range(2)]),)
        dims = {"pixel_values": {0: torch.export.Dim("batch")}}
        folders.write_text(folder / "vision.json", json.dumps(asdict(model.config), indent=2))
        labels = model.label_names
    else:
        hf, tokenizer = merge_adapter(model.hf, model.tokenizer) if is_adapter(model.hf) else (model.hf, model.tokenizer)
        pairs = test.pairs is not None
        names = ["input_ids", "attention_mask", *(["token_type_ids"] if pairs else [])]  # a pair's segment ids matter
        net = _TextLogits(hf.eval(), pairs)
        rows = _rows(test)[:2] * (2 if len(test) < 2 else 1)
        sample = tokenizer([t for t, _ in rows], [p for _, p in rows] if pairs else None, truncation=True, padding=True, return_tensors="pt")
        example = tuple(sample[n] for n in names)
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
        dims = {n: {0: batch, 1: sequence} for n in names}
        tokenizer.save_pretrained(folder)
        hf.config.save_pretrained(folder)  # id2label, for optimum and the like
        labels = model.label_names
    folders.write_text(folder / "labels.json", json.dumps(labels))
    _torch_onnx_export(net, example, names, dims, folder / "model.onnx")
    folders.follow_umask(folder)


class _TextLogits(torch.nn.Module):
    """input_ids, attention_mask (and for text pairs token_type_ids) -> logits (B, L): what transferkit feeds
    a text model (single texts: token types stay 0)."""

    def __init__(self, hf, pairs: bool = False):
        super().__init__()
        self.hf, self.pairs = hf, pairs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        segments = {"token_type_ids": token_type_ids} if self.pairs else {}
        return self.hf(input_ids=input_ids, attention_mask=attention_mask, **segments).logits


class _ImageLogits(torch.nn.Module):
    """pixel_values (B, 3, S, S), normalised as vision.json says -> logits (B, L)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values)


def _torch_onnx_export(net, example: tuple, names: list[str], dims: dict, path: Path) -> None:
    """torch.onnx's exporter (torch.export based: the older tracer bakes the padding of the example
    batch into the graph, and gave 6e-3 wrong probabilities on a padded batch)."""
    import warnings

    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # library code never prints: the exporter logs every skipped op
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            large = sum(p.numel() * p.element_size() for p in net.parameters()) > 2**30
            torch.onnx.export(net, example, str(path), input_names=names, output_names=["logits"], dynamic_shapes=dims,
                              dynamo=True, external_data=large, verbose=False)  # fmt: skip
    except ImportError as e:
        raise UserError(f"ONNX export needs the onnx and onnxscript packages ({e}); install them with: pip install onnx onnxscript") from None
    except Exception as e:  # an operator the exporter cannot translate, and the like
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"torch.onnx could not export this model ({text}); serve the run's model folder with PyTorch instead") from None
    finally:
        onnx_logger.setLevel(level)


def _write_card(folder: Path, cfg, metrics: dict, run_dir: Path, output: Path, format: str, check: Check) -> None:
    from .card import model_card

    merged = {"lora": "the LoRA updates merged into the weights", "prompt": "the soft prompt folded into tokens the tokenizer puts first"}
    what = "model.onnx for onnxruntime" if format == "onnx" else merged.get(cfg.regime, "a plain model folder")
    note = (f"Exported from the run `{run_dir.name}` by `transferkit export --format {format}` ({what}), and checked "
            f"on the run's test split before it was kept: on {check.examples} {check.unit}, the largest probability "
            f"difference from the run's own predictions is {check.max_difference:.2e} and "
            f"{check.identical} of {check.examples} predictions are identical.")  # fmt: skip
    folders.write_text(folder / "README.md", model_card(cfg, metrics, folder, output, note))
