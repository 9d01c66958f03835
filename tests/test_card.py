"""Model cards: every model folder's README.md, read back by huggingface_hub's parser and checked against metrics.json."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
import torch
import yaml

from helpers import image_overrides, llama_overrides, tiny_overrides
from transferkit import load_config, train

# (model fixture, data fixture, regime, overrides helper) -> how the folder loads, and the hub's fields for it.
CASES = {
    "full": ("tiny_bert", "toy_csv", "full", tiny_overrides, "transformers", "transformers", "text-classification"),
    "lora": ("tiny_bert", "toy_csv", "lora", tiny_overrides, "peft", "peft", "text-classification"),
    "image": ("tiny_cnn", "toy_images", "freeze", image_overrides, "image", None, "image-classification"),
    "causal-lora": ("tiny_llama", "toy_csv", "lora", llama_overrides, "causal-peft", "peft", "text-generation"),
    "icl": ("tiny_llama", "toy_csv", "icl", llama_overrides, "icl", "transformers", "text-generation"),
}


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """case -> its finished Run, trained once for the module."""
    done: dict = {}

    def run(case: str):
        if case not in done:
            model_fixture, data_fixture, regime, overrides, *_ = CASES[case]
            model, data = request.getfixturevalue(model_fixture), request.getfixturevalue(data_fixture)
            out = tmp_path_factory.mktemp(case) / "run"
            done[case] = train(load_config(None, overrides(model, data, out, regime, **{"train.epochs": 1})))
        return done[case]

    return run


def load_card(folder):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md")


def load_lines(card_text: str) -> str:
    return re.search(r"## Load it without transferkit\n\n```python\n(.*?)```", card_text, re.S).group(1)


@pytest.mark.parametrize("case", CASES)
def test_model_card_metadata_and_text_agree_with_metrics_json(case, runs, request):
    from transferkit.card import folder_kind

    _, data_fixture, regime, _, kind, library, pipeline = CASES[case]
    data = request.getfixturevalue(data_fixture)
    run = runs(case)
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert folder_kind(run.model_dir) == kind

    card = load_card(run.model_dir)
    meta = card.data
    assert meta.library_name == library and meta.pipeline_tag == pipeline
    assert meta.base_model is None  # a local folder has no hub id: the text names it instead
    assert meta.datasets == [data.name] and {"transferkit", regime} <= set(meta.tags)
    results = {r.metric_name: r for r in meta.eval_results}
    assert results["accuracy"].metric_value == metrics["test"]["accuracy"]
    assert results["macro-F1"].metric_value == metrics["test"]["macro_f1"] and results["macro-F1"].metric_type == "f1"
    assert all(r.dataset_split == "test" and r.task_type == pipeline for r in meta.eval_results)
    assert set(meta.metrics) == {r.metric_type for r in meta.eval_results}

    text = card.text
    p, d = metrics["parameters"], metrics["data"]
    assert f"{p['trainable']:,} of {p['total']:,} parameters" in text
    assert f"{d['train']:,} training, {d['validation']:,} validation and {d['test']:,} test examples" in text
    assert all(label in text for label in metrics["labels"])
    assert f"| accuracy | {metrics['test']['accuracy']:.4f} |" in text
    assert f"{metrics['train_seconds']:.1f} s of training" in text and "transferkit 0.1.0" in text
    hyper = yaml.safe_load(re.search(r"## Hyperparameters \(as resolved\)\n\n```yaml\n(.*?)```", text, re.S).group(1))
    assert hyper["regime"] == regime and hyper["train"] == run.config.to_dict()["train"]
    assert str(run.dir.parent) not in text.split("## Load it")[0]  # the user's folders stay out of what is shared


def test_load_lines_of_a_plain_and_an_adapter_folder_predict_what_transferkit_predicts(runs):
    from transferkit.inference import load_run, predict_proba

    for regime in ("full", "lora"):
        run = runs(regime)
        text = "the red apple and the bus"
        code = load_lines((run.model_dir / "README.md").read_text()).replace("Shares fell sharply after the results.", text)
        namespace: dict = {}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code.replace("Shares fell sharply.", text), namespace)
        model, _ = load_run(run.dir)
        expected = predict_proba(model, [text])[0]
        if regime == "full":
            scores = {r["label"]: r["score"] for r in namespace["classify"](text, top_k=None, truncation=True)}
            got = torch.tensor([scores[label] for label in model.label_names])
        else:
            got = namespace["probabilities"][0].detach()
        assert torch.allclose(got, expected, atol=1e-5), regime


def test_image_card_lines_label_an_image_as_transferkit_does(runs, toy_images):
    """The card's preprocessing in plain numpy / Pillow is transferkit's evaluation view (the network
    itself needs its code: small-cnn is transferkit's, so the test builds it as the card says)."""
    from transferkit.inference import load_run, predict_proba

    run = runs("image")
    code = load_lines((run.model_dir / "README.md").read_text())
    preprocess = code[code.index("size = spec"):code.index("print(")]
    photo = sorted((toy_images / "red").iterdir())[0]
    model, _ = load_run(run.dir)
    namespace = {"spec": json.loads((run.model_dir / "vision.json").read_text())}
    exec("import numpy as np\nfrom PIL import Image\n" + preprocess.replace("photo.jpg", str(photo)), namespace)
    with torch.no_grad():
        got = model(torch.from_numpy(namespace["x"])).softmax(-1)[0]
    assert torch.allclose(got, predict_proba(model, [photo])[0], atol=1e-6)
