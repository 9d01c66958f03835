"""Integration on the real packaged model and data (slow: run with `pytest -m slow`)."""

from __future__ import annotations

import json
import time

import pytest

from transferkit import assets, load_config, train
from transferkit.inference import predict

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def needs_assets():
    for asset in (assets.MODELS["minilm-l6"], assets.DATASETS["bbc-news"]):
        if not asset.installed:
            pytest.skip(f"{asset.name} is not installed ({asset.install})")


def test_freeze_ten_epochs_cost_little_more_than_one(tmp_path):
    seconds = {}
    for epochs in (1, 10):
        cfg = load_config(None, {"regime": "freeze", "train.epochs": epochs, "train.patience": None, "output": str(tmp_path / str(epochs))})
        started = time.perf_counter()
        run = train(cfg)
        seconds[epochs] = time.perf_counter() - started
    assert seconds[10] < 1.5 * seconds[1], seconds
    assert run.test_accuracy >= 0.9


def test_lora_on_a_subset_learns_and_reloads(tmp_path):
    cfg = load_config(None, {"regime": "lora", "data.train_size": 300, "train.epochs": 2, "output": str(tmp_path / "lora")})
    run = train(cfg)
    assert run.test_accuracy >= 0.8, json.dumps(run.metrics["stages"])
    texts = ["The central bank raised interest rates again as inflation stayed high.",
             "The striker scored twice in the second half to win the cup final."]
    labels = [label for label, _ in predict(run.dir, texts)]
    assert labels == ["business", "sports"]
