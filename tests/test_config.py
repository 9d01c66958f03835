"""Config files, overrides and their checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from transferkit import UserError, load_config
from transferkit.methods import REGIMES

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_configs_load_and_say_how_to_run(path):
    cfg = load_config(path)
    assert cfg.regime in REGIMES
    head = path.read_text().splitlines()
    command = f"configs/{path.parent.name}/{path.name}"
    assert head[0].startswith("# ") and any(f"transferkit train {command}" in l or f"transferkit compare {command}" in l for l in head[:4])


def test_overrides_beat_the_file_and_coerce_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("regime: lora\ntrain:\n  lr: 1.0e-3\n")
    cfg = load_config(path, ["train.lr=3e-4", "lora.r=8", "train.patience=null", "lora.targets=query,value"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)  # YAML reads 3e-4 as text
    assert cfg.lora.r == 8 and cfg.train.patience is None
    assert cfg.lora.targets == ["query", "value"]


def test_defaults_leave_the_regime_to_choose():
    cfg = load_config()
    assert cfg.train.lr is None and cfg.train.epochs is None and cfg.train.batch_size is None
    full, freeze = (REGIMES[r].stages(load_config(None, [f"regime={r}"]))[0] for r in ("full", "freeze"))
    assert full.lr < freeze.lr and full.epochs < freeze.epochs


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.lr=0", "train.lr"),
        ("train.schedule=step", "train.schedule"),
        ("data.test_fraction=1.5", "data.test_fraction"),
        ("train.batch_size=10", "micro_batch_size"),
        ("nosection.key=1", "nosection"),
        ("train", "section.key=value"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(override, words):
    extra = ["train.micro_batch_size=4"] if "batch_size" in override else []
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        load_config(None, [override, *extra])


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
