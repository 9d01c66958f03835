"""Fixtures: tiny real models and toy data, built once per test session (the builders are in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import build_tiny_bert, build_tiny_cnn, build_tiny_llama, toy_rows, write_csv, write_toy_images  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def toy_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "toy.csv", toy_rows(120, seed=1))


@pytest.fixture(scope="session")
def toy_images(tmp_path_factory) -> Path:
    return write_toy_images(tmp_path_factory.mktemp("images"), per_class=30, seed=1)


@pytest.fixture(scope="session")
def tiny_cnn(tmp_path_factory) -> Path:
    return build_tiny_cnn(tmp_path_factory.mktemp("tiny-cnn"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
