"""Several processes (`train --processes 2`: DDP on gloo, on this CPU) train as one process does:
the same global batch and data order, so with dropout off the same losses and metrics within fp32
rounding; one run folder, one speaker."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import llama_overrides, tiny_overrides, toy_chats, write_jsonl


def without_dropout(model: Path, folder: Path) -> Path:
    """The model with every dropout at 0: two processes draw other dropout masks than one does, so
    only without dropout can their runs agree to rounding."""
    shutil.copytree(model, folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "dropout"):
        if key in config:
            config[key] = 0.0
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transferkit", "train", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind, distributed", [("encoder classification", "ddp"), ("causal LM generation", "ddp"),
                                               ("encoder classification", "fsdp"), ("causal LM generation", "fsdp")])  # fmt: skip
def test_two_processes_train_as_one(kind, distributed, tiny_bert, tiny_llama, toy_csv, tmp_path):
    # fsdp: each process holds half of every weight, gradient and optimizer state; one process ignores it.
    if kind == "encoder classification":
        # 72 training texts in batches of 8 of micro-batches of 4 (accumulation across processes too);
        # the validation split's last batch is uneven (fsdp: one process runs a batch again, uncounted).
        model, data = without_dropout(tiny_bert, tmp_path / "model"), toy_csv
        overrides = lambda out: tiny_overrides(model, data, out, "full", **{"train.epochs": 2, "train.micro_batch_size": 4,  # noqa: E731
                                                                           "train.distributed": distributed})  # fmt: skip
    else:
        # Token counts differ between the processes' shares: the loss is normalised by the whole step's.
        model, data = without_dropout(tiny_llama, tmp_path / "model"), write_jsonl(tmp_path / "chats.jsonl", toy_chats(45, seed=2))
        overrides = lambda out: llama_overrides(model, data, out, "lora", **{"train.epochs": 2, "task.name": "generate",  # noqa: E731
                                                                            "train.distributed": distributed})  # fmt: skip
    one = run_cli(overrides(tmp_path / "one"), tmp_path)
    two = run_cli(["--processes", "2", *overrides(tmp_path / "two")], tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]

    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    for key, value in a["test"].items():
        if isinstance(value, float):
            assert b["test"][key] == pytest.approx(value, rel=1e-5, abs=1e-5), key  # relative: perplexity is exp(loss)
    assert [s["steps"] for s in b["stages"]] == [s["steps"] for s in a["stages"]], "the same optimizer steps"
    assert a["processes"] == {"count": 1, "distributed": None, "weights_held": 1.0}
    assert b["processes"]["count"] == 2 and b["processes"]["distributed"] == distributed
    assert b["processes"]["weights_held"] == (pytest.approx(0.5, abs=0.02) if distributed == "fsdp" else 1.0)
    # The saved folder holds the trained weights (fsdp: gathered back from the shards), as one process saves them.
    from safetensors.torch import load_file

    saved = sorted((tmp_path / "one" / "model").glob("*.safetensors"))
    assert saved
    for path in saved:
        mine, theirs = load_file(path), load_file(tmp_path / "two" / "model" / path.name)
        assert mine.keys() == theirs.keys()
        for name, tensor in mine.items():
            assert torch.allclose(theirs[name], tensor, atol=1e-5), name
    # One speaker, one folder: the result line once, nothing left beside the run.
    assert two.stdout.count("run folder:") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", "one", "two", *([data.name] if data.parent == tmp_path else [])])


def test_fsdp_refuses_a_regime_on_cached_features_in_one_line(tiny_bert, toy_csv, tmp_path):
    result = run_cli(["--processes", "2", *tiny_overrides(tiny_bert, toy_csv, tmp_path / "run", "freeze", **{"train.distributed": "fsdp"})], tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "train.distributed=ddp" in errors[0] and "freeze" in errors[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_bad_input_under_several_processes_is_one_line_exit_2(tiny_bert, tmp_path):
    bad = tmp_path / "empty.csv"
    bad.write_text("text,label\n")
    result = run_cli(["--processes", "2", *tiny_overrides(tiny_bert, bad, tmp_path / "run", "full")], tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_several_processes_do_not_discard_a_checkpoint_they_cannot_resume(tiny_bert, toy_csv, tmp_path):
    from helpers import fingerprint

    staging = tmp_path / "run.partial"
    staging.mkdir()
    (staging / "checkpoint.json").write_text('{"last": "checkpoint-1"}')
    (staging / "config.yaml").write_text("# transferkit run configuration\n")
    before = fingerprint(staging)
    result = run_cli(["--processes", "2", *tiny_overrides(tiny_bert, toy_csv, tmp_path / "run", "full")], tmp_path)
    assert result.returncode == 2 and "--no-resume" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert fingerprint(staging) == before
