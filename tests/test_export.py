"""transferkit export: merged and ONNX models predict what the run predicts, on its whole test split."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import image_overrides, llama_overrides, tiny_overrides
from transferkit import cli, load_config, train
from transferkit.data.splits import load_splits
from transferkit.inference import load_run, predict_proba


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """regime name -> a finished run on the tiny models, trained once for the module."""
    done: dict = {}
    setups = {
        "lora": ("tiny_bert", "toy_csv", "lora", tiny_overrides),
        "prompt": ("tiny_bert", "toy_csv", "prompt", tiny_overrides),
        "full": ("tiny_bert", "toy_csv", "full", tiny_overrides),
        "image": ("tiny_cnn", "toy_images", "lora", image_overrides),
        "causal-lora": ("tiny_llama", "toy_csv", "lora", llama_overrides),
    }

    def run(name: str):
        if name not in done:
            model, data, regime, overrides = setups[name]
            out = tmp_path_factory.mktemp(name) / "run"
            epochs = 1 if name.startswith("causal") else 2  # a causal LM validates by scoring every label: slow
            cfg = load_config(None, overrides(request.getfixturevalue(model), request.getfixturevalue(data), out, regime, **{"train.epochs": epochs}))
            done[name] = train(cfg)
        return done[name]

    return run


def split_inputs(run) -> list:
    return list(load_splits(run.config.data, run.config.train.seed).test.inputs)


def plain_probabilities(folder, texts: list[str]) -> torch.Tensor:
    """As a user would: plain transformers, the folder's own tokenizer and model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return model(**tokenizer(texts, truncation=True, padding=True, return_tensors="pt")).logits.softmax(-1)


@pytest.mark.parametrize("regime", ["lora", "prompt"])
def test_merged_folder_predicts_what_the_adapter_predicts(regime, runs, tmp_path, capsys):
    from huggingface_hub import ModelCard

    run = runs(regime)
    out = tmp_path / "merged"
    assert cli.main(["export", str(run.dir), "--format", "merged", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "largest probability difference" in printed and "identical predictions" in printed

    assert not (out / "adapter_config.json").exists()  # a plain model folder
    texts = split_inputs(run)
    model, _ = load_run(run.dir)
    expected = predict_proba(model, texts)
    got = plain_probabilities(out, texts)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert (got - expected).abs().max() <= 1e-4
    record = json.loads((out / "export.json").read_text())
    assert record["check"]["examples"] == len(texts) and record["check"]["identical"] == len(texts)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "checked on the run's test split" in card.text


def test_onnx_of_an_encoder_gives_transferkit_labels_on_the_whole_test_split(runs, tmp_path):
    import onnxruntime
    from transformers import AutoTokenizer

    from transferkit.export import export

    run = runs("full")
    result = export(run.dir, "onnx", tmp_path / "onnx")
    texts = split_inputs(run)
    assert result.check.examples == len(texts) and result.check.max_difference <= 1e-4

    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", "sequence"]] * 2  # dynamic axes
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "onnx")
    model, _ = load_run(run.dir)
    expected = predict_proba(model, texts).argmax(-1)
    for batch in (len(texts), 1):  # every example at once, then one at a time (other shapes than exported)
        labels = []
        for i in range(0, len(texts), batch):
            inputs = tokenizer(texts[i : i + batch], truncation=True, padding=True, return_tensors="np")
            labels += session.run(["logits"], {n: inputs[n] for n in ("input_ids", "attention_mask")})[0].argmax(-1).tolist()
        assert labels == expected.tolist()


def test_onnx_of_an_image_model_gives_transferkit_labels(runs, tmp_path):
    import onnxruntime

    from transferkit.data.examples import Examples
    from transferkit.export import export

    run = runs("image")
    export(run.dir, "onnx", tmp_path / "onnx")
    files = split_inputs(run)
    model, _ = load_run(run.dir)
    items = model.encode(Examples(files, None), None)
    pixels = torch.stack([items[i]["pixel_values"] for i in range(len(files))]).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(["logits"], {"pixel_values": pixels})[0])
    expected = predict_proba(model, files)
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    assert (logits.softmax(-1) - expected).abs().max() <= 1e-4
    assert json.loads((tmp_path / "onnx" / "vision.json").read_text())["labels"] == model.label_names


def test_merged_causal_lm_is_a_plain_folder_with_the_same_label_scores(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from transferkit.export import export

    run = runs("causal-lora")
    result = export(run.dir, "merged", tmp_path / "merged")
    assert result.check.identical == result.check.examples > 0 and result.check.max_difference <= 1e-4
    assert not (tmp_path / "merged" / "adapter_config.json").exists() and (tmp_path / "merged" / "lm.json").is_file()
    AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # loads as it is


@pytest.mark.parametrize("run_name, format, words", [
    ("full", "gguf", "convert_hf_to_gguf.py"),
    ("full", "merged", "already a plain model folder"),
    ("image", "merged", "already plain"),
    ("causal-lora", "onnx", "ONNX export is for encoders and image models"),
])  # fmt: skip
def test_formats_a_run_cannot_take_are_refused_in_one_line(run_name, format, words, runs, tmp_path, capsys):
    run_dir = runs(run_name).dir
    capsys.readouterr()  # what training the run said
    assert cli.main(["export", str(run_dir), "--format", format, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_output_that_is_not_an_export_is_never_replaced(runs, tmp_path, capsys):
    run = runs("lora")
    export = lambda out, *flags: cli.main(["export", str(run.dir), "--format", "merged", "--output", str(out), *flags])  # noqa: E731
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert export(mine, "--overwrite") == 2 and (mine / "notes.txt").read_text() == "keep"
    assert export(run.dir / "merged") == 2 and not (run.dir / "merged").exists()  # a run folder holds only its own files
    assert "inside the transferkit folder" in capsys.readouterr().err

    out = tmp_path / "merged"
    assert export(out) == 0
    assert export(out) == 2 and "--overwrite" in capsys.readouterr().err
    assert export(out, "--overwrite") == 0
    (out / "mine.txt").write_text("mine")
    assert export(out, "--overwrite") == 2 and "mine.txt" in capsys.readouterr().err and (out / "mine.txt").exists()


def test_an_export_that_fails_its_check_leaves_nothing(runs, tmp_path, monkeypatch):
    from transferkit import export as export_module
    from transferkit.errors import UserError

    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # no export can pass: the check decides, not the writer
    with pytest.raises(UserError, match="does not predict what the run predicts"):
        export_module.export(runs("lora").dir, "merged", tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []
