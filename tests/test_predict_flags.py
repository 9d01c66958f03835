"""predict --json, --batch-size and --device."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers import image_overrides, tiny_overrides
from transferkit import cli, load_config, train


@pytest.fixture(scope="module")
def run_dir(tiny_bert, toy_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    train(load_config(None, tiny_overrides(tiny_bert, toy_csv, out, "full", **{"train.epochs": 2})))
    return out


def predict_json(capsys, run_dir, *flags) -> list[dict]:
    capsys.readouterr()
    assert cli.main(["predict", str(run_dir), *flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_holds_what_the_csv_holds_and_every_label(run_dir, toy_csv, tmp_path, capsys):
    rows = predict_json(capsys, run_dir, "--input", str(toy_csv))
    assert cli.main(["predict", str(run_dir), "--input", str(toy_csv), "--output", str(tmp_path / "p.csv")]) == 0
    written = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["text"] for r in rows] == [r["text"] for r in written]
    assert [r["predicted_label"] for r in rows] == [r["predicted_label"] for r in written]
    assert [r["probability"] for r in rows] == [float(r["probability"]) for r in written]
    for row in rows:
        assert set(row["probabilities"]) == {"fruit", "vehicle"} and sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert row["probabilities"][row["predicted_label"]] == row["probability"]
    (single,) = predict_json(capsys, run_dir, "--text", rows[0]["text"])
    assert single == rows[0]


def test_batch_size_changes_nothing_but_the_batches(run_dir, toy_csv, capsys):
    one = predict_json(capsys, run_dir, "--input", str(toy_csv), "--batch-size", "1", "--device", "cpu")
    many = predict_json(capsys, run_dir, "--input", str(toy_csv), "--batch-size", "50")
    assert [r["predicted_label"] for r in one] == [r["predicted_label"] for r in many]
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(one, many)) <= 1e-5


@pytest.mark.parametrize("flags, words", [
    (["--device", "toaster"], "is not a device"),
    (["--device", f"cuda:{torch.cuda.device_count()}"], "no such CUDA GPU"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--json", "--output", "out.json"], "give one of them"),
])  # fmt: skip
def test_bad_predict_flags_are_one_line(flags, words, run_dir, toy_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["predict", str(run_dir), "--input", str(toy_csv), *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "out.json").exists()


def test_image_predictions_as_json(tiny_cnn, toy_images, tmp_path, capsys):
    out = tmp_path / "run"
    train(load_config(None, image_overrides(tiny_cnn, toy_images, out, "freeze", **{"train.epochs": 1})))
    rows = predict_json(capsys, out, "--input", str(toy_images / "red"), "--batch-size", "4")
    assert len(rows) == 30 and all(r["path"].startswith(str(toy_images / "red")) for r in rows)
    assert all(set(r["probabilities"]) == {"blue", "red"} for r in rows)
