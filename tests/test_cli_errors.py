"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, and the run
folder that was there before is left exactly as it was."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import check_refused, fingerprint, tiny_overrides, toy_rows, write_csv
from transferkit import assets, cli


@pytest.fixture(scope="session")
def finished_run(tiny_bert, toy_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "done"
    assert cli.main(["train", *tiny_overrides(tiny_bert, toy_csv, out, "freeze", **{"train.epochs": 2})]) == 0
    return out


@pytest.fixture
def run_dir(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def train_args(tiny_bert, data, run_dir, regime="freeze", **extra) -> list[str]:
    return ["train", *tiny_overrides(tiny_bert, data, run_dir, regime, **{"train.epochs": 1, **extra}), "overwrite=true"]


def test_missing_data_file(capsys, tiny_bert, run_dir, tmp_path):
    check_refused(capsys, train_args(tiny_bert, tmp_path / "nope.csv", run_dir), run_dir, "nope.csv", "does not exist")


def test_unreadable_data_file(capsys, tiny_bert, run_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": "b", label: y}\n')
    check_refused(capsys, train_args(tiny_bert, bad, run_dir), run_dir, "bad.jsonl:2", "not valid JSON")


def test_data_path_is_a_folder(capsys, tiny_bert, run_dir, tmp_path):
    folder = tmp_path / "data.csv"
    folder.mkdir()
    check_refused(capsys, train_args(tiny_bert, folder, run_dir), run_dir, "data.csv", "folder")


def test_missing_column(capsys, tiny_bert, toy_csv, run_dir):
    argv = train_args(tiny_bert, toy_csv, run_dir) + ["data.label_column=stars"]
    check_refused(capsys, argv, run_dir, "'stars'", "--label-column", "text, label")


def test_empty_dataset(capsys, tiny_bert, run_dir, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    check_refused(capsys, train_args(tiny_bert, empty, run_dir), run_dir, "empty.csv", "no examples")


def test_test_label_never_seen_in_training(capsys, tiny_bert, toy_csv, run_dir, tmp_path):
    test = write_csv(tmp_path / "test.csv", toy_rows(10, seed=3) + [{"text": "a plum", "label": "animal"}])
    argv = train_args(tiny_bert, toy_csv, run_dir) + [f"data.test={test}"]
    check_refused(capsys, argv, run_dir, "'animal'", "never in training")


def test_class_too_small_to_split(capsys, tiny_bert, run_dir, tmp_path):
    data = write_csv(tmp_path / "small.csv", toy_rows(40, seed=3) + [{"text": "a plum", "label": "rare"}] * 2)
    check_refused(capsys, train_args(tiny_bert, data, run_dir), run_dir, "'rare'", "2 example", "at least 3")


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.name=no-such-model", ["no-such-model", "built-in"]),
        ("data.name=no-such-set", ["no-such-set", "built-in"]),
        ("regime=magic", ["magic", "full, freeze, lora"]),
        ("train.lr=0", ["train.lr", "positive"]),
        ("train.lr=-1e-4", ["train.lr", "positive"]),
        ("train.batch_size=0", ["train.batch_size", "positive"]),
        ("train.epochs=two", ["train.epochs", "whole number"]),
        ("train.lrr=1e-4", ["train.lrr", "unknown"]),
        ("lora.r=0", ["lora.r"]),
    ],
)
def test_unknown_names_and_invalid_numbers(capsys, tiny_bert, toy_csv, run_dir, override, words):
    check_refused(capsys, train_args(tiny_bert, toy_csv, run_dir) + [override], run_dir, *words)


def test_builtin_asset_not_installed(capsys, monkeypatch, toy_csv, run_dir):
    missing = dataclasses.replace(assets.MODELS["minilm-l6"], locate=lambda: None)
    monkeypatch.setitem(assets.MODELS, "minilm-l6", missing)
    argv = ["train", f"data.name={toy_csv}", f"output={run_dir}", "overwrite=true"]
    check_refused(capsys, argv, run_dir, "minilm-l6", "not installed", "pip install")


def test_finished_run_is_not_clobbered(capsys, tiny_bert, toy_csv, run_dir):
    argv = [a for a in train_args(tiny_bert, toy_csv, run_dir) if a != "overwrite=true"]
    check_refused(capsys, argv, run_dir, str(run_dir), "--overwrite")


def test_nan_loss_stops_and_keeps_last_good_weights(capsys, tiny_bert, toy_csv, tmp_path):
    out = tmp_path / "nan"
    argv = ["train", *tiny_overrides(tiny_bert, toy_csv, out, "full", **{"train.lr": 1e30, "train.max_grad_norm": 0})]
    assert cli.main(argv) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"NaN .* at step \d+", message) and "train.lr" in message, message
    # The last good weights (here: the pre-trained ones) were saved and load as a plain model.
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert all(p.isfinite().all() for p in model.parameters())
    assert not (out / "metrics.json").exists()  # the run is not marked finished


def test_nan_loss_keeps_an_earlier_finished_run(capsys, tiny_bert, toy_csv, run_dir):
    argv = train_args(tiny_bert, toy_csv, run_dir, "full", **{"train.lr": 1e30, "train.max_grad_norm": 0})
    before = fingerprint(run_dir)
    assert cli.main(argv) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert ".partial" in message
    assert fingerprint(run_dir) == before


def test_real_process_exit_code_and_no_traceback(tmp_path):
    """The same contract from a real process, as a shell script would see it."""
    result = subprocess.run(
        [sys.executable, "-m", "transferkit", "train", "--data", str(tmp_path / "missing.csv")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "missing.csv" in result.stderr


def test_predict_and_evaluate_bad_input(capsys, run_dir, tmp_path):
    check_refused(capsys, ["evaluate", str(tmp_path / "nowhere")], run_dir, "not a run folder")
    check_refused(capsys, ["predict", str(run_dir), "--input", str(tmp_path / "x.csv")], run_dir, "x.csv", "does not exist")
    unseen = write_csv(tmp_path / "unseen.csv", [{"text": "a plum", "label": "animal"}])
    check_refused(capsys, ["evaluate", str(run_dir), "--data", str(unseen)], run_dir, "'animal'", "never seen")
    json.loads((run_dir / "metrics.json").read_text())  # still intact and readable


def test_lora_targets_the_model_does_not_have(capsys, tiny_bert, toy_csv, run_dir):
    argv = train_args(tiny_bert, toy_csv, run_dir, "lora") + ["lora.targets=no_such_layer"]
    check_refused(capsys, argv, run_dir, "lora.targets")
