"""What a run leaves behind loads in the ecosystem as it is, and predicts what transferkit predicts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from helpers import tiny_overrides
from transferkit import cli, load_config, train

PLAIN_LOAD = r"""
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder, texts = Path(sys.argv[1]), json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder)
if (folder / "adapter_config.json").exists():
    from peft import PeftModel
    labels = json.loads((folder / "labels.json").read_text())
    base_path = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForSequenceClassification.from_pretrained(
        base_path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    model = PeftModel.from_pretrained(base, folder)
else:
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
model.eval()
with torch.no_grad():
    enc = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
    probs = model(**enc).logits.softmax(-1)
print(json.dumps([[labels[i], p] for p, i in zip(*[t.tolist() for t in probs.max(-1)])]))
"""


@pytest.mark.parametrize("regime", ["full", "freeze", "staged", "lora", "prompt"])
def test_saved_model_loads_with_plain_libraries_and_predicts_the_same(regime, tiny_bert, toy_csv, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_bert, toy_csv, out, regime, **{"train.epochs": 3, "staged.head_epochs": 2})
    assert cli.main(["train", *overrides]) == 0
    predictions = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(out), "--input", str(toy_csv), "--output", str(predictions)]) == 0
    rows = list(csv.DictReader(open(predictions)))
    assert set(rows[0]) == {"text", "label", "predicted_label", "probability"}

    texts = [row["text"] for row in rows]
    plain = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(out / "model"), json.dumps(texts)], capture_output=True, text=True, check=True
    )
    expected = json.loads(plain.stdout.strip().splitlines()[-1])
    assert [row["predicted_label"] for row in rows] == [label for label, _ in expected]
    assert [float(row["probability"]) for row in rows] == pytest.approx([p for _, p in expected], abs=1e-4)


def test_same_config_and_seed_give_identical_metrics(tiny_bert, toy_csv, tmp_path):
    metrics = []
    for name in ("a", "b"):
        cfg = load_config(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / name, "full", **{"train.epochs": 2}))
        metrics.append(train(cfg).metrics)
    assert metrics[0]["test"] == metrics[1]["test"]
    assert metrics[0]["validation"] == metrics[1]["validation"]
    logs = [(tmp_path / n / "metrics.jsonl").read_text() for n in ("a", "b")]
    assert logs[0] == logs[1]


def test_another_seed_gives_another_split(tiny_bert, toy_csv, tmp_path):
    cfgs = [load_config(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / f"s{s}", "freeze", **{"train.seed": s})) for s in (0, 1)]
    from transferkit.data.splits import load_splits

    a, b = (load_splits(c.data, c.train.seed) for c in cfgs)
    assert a.test.inputs != b.test.inputs


def test_run_folder_contents(tiny_bert, toy_csv, tmp_path):
    run = train(load_config(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "r", "lora", **{"train.epochs": 1})))
    names = {p.name for p in run.dir.iterdir()}
    assert {"config.yaml", "metrics.json", "metrics.jsonl", "model"} <= names
    assert not any(n.startswith(".") for n in names)  # no temporary files left behind
    assert (run.model_dir / "adapter_model.safetensors").is_file()
    assert not list(run.dir.rglob("*.bin")) and not list(run.dir.rglob("*.pt"))  # safetensors only
    m = run.metrics
    assert set(m["test"]) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix"}
    assert sum(map(sum, m["test"]["confusion_matrix"])) == m["data"]["test"]
    reloaded = load_config(run.dir / "config.yaml")
    assert reloaded == run.config
    for line in (run.dir / "metrics.jsonl").read_text().splitlines():
        assert {"stage", "step", "loss", "lr"} <= set(json.loads(line))
