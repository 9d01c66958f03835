"""Experiment trackers through accelerate (train.report_to): TensorBoard's event files read back."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import yaml

from helpers import tiny_overrides
from transferkit import cli, folders, load_config, train


def test_tensorboard_events_equal_metrics_jsonl(tiny_bert, toy_csv, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_bert, toy_csv, out, "staged", **{"train.epochs": 2, "staged.head_epochs": 2, "train.report_to": "tensorboard"})
    run = train(load_config(None, overrides))

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    # One point per metrics.jsonl line, its step counted over both stages; TensorBoard keeps float32.
    expected: dict[str, list] = {}
    for step, record in enumerate(records, start=1):
        for key, value in record.items():
            if key not in ("stage", "step"):
                expected.setdefault(key, []).append((step, float(np.float32(value))))
    assert {"loss", "lr", "val_loss", "val_accuracy", "val_macro_f1"} <= set(expected)
    assert [r["stage"] for r in records][0] != [r["stage"] for r in records][-1]  # two stages, one axis
    for tag, points in expected.items():
        assert scalars[tag] == points, tag

    test = run.metrics["test"]
    last = len(records)
    assert scalars["test_accuracy"] == [(last, float(np.float32(test["accuracy"])))]
    assert scalars["test_loss"] == [(last, float(np.float32(test["loss"])))]
    assert scalars["train_seconds"] == [(last, float(np.float32(run.metrics["train_seconds"])))]
    # The resolved configuration as hyperparameters.
    (hparams,) = (out / "tensorboard").glob("*/hparams.yml")
    config = yaml.safe_load(hparams.read_text())
    assert config["train.lr"] == run.config.train.lr and config["regime"] == "staged" and config["train.report_to"] == "tensorboard"
    assert folders.is_run(out)  # the event files belong to the run: --overwrite may replace it


@pytest.mark.parametrize("value, words", [("tensorboard,none", "cannot stand beside"), ("comet", "unknown tracker 'comet'")])
def test_bad_report_to_is_one_line(value, words, tiny_bert, toy_csv, tmp_path, capsys):
    assert cli.main(["train", *tiny_overrides(tiny_bert, toy_csv, tmp_path / "run", "full", **{"train.report_to": value})]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_tracker_whose_package_is_missing_says_how_to_install_it(tiny_bert, toy_csv, tmp_path, capsys):
    assert cli.main(["train", *tiny_overrides(tiny_bert, toy_csv, tmp_path / "run", "full", **{"train.report_to": "wandb"})]) == 2
    assert "pip install wandb" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_no_tracker_by_default(tiny_bert, toy_csv, tmp_path):
    run = train(load_config(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "run", "freeze")))
    assert run.config.train.report_to is None and not (tmp_path / "run" / "tensorboard").exists()
