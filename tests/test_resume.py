"""Checkpoints and resume: a run stopped anywhere and started again ends bit for bit where an
uninterrupted run ends (test metrics, weights, the logged losses); a checkpoint of another run is
refused; nothing half-written is ever taken for a checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from helpers import check_refused, fingerprint, image_overrides, tiny_overrides

from transferkit import runs
from transferkit.training import checkpoint, loop


class Killed(BaseException):
    """Stands in for the process dying: not an Exception, so nothing on the way out treats it as an error."""


def weights_hash(run_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((run_dir / "model").rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def losses(run_dir: Path) -> list[tuple[str, int, float]]:
    return [(r["stage"], r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def check_complete(staging: Path) -> None:
    """The checkpoint the pointer names holds every file a checkpoint has, each readable."""
    from safetensors.torch import load_file

    folder = staging / json.loads((staging / checkpoint.POINTER).read_text())["last"]
    state = json.loads((folder / "state.json").read_text())
    for name in ("weights.safetensors", "rng.safetensors") + (("best.safetensors",) if state["loop"] else ()):
        load_file(folder / name)


def kill_on(monkeypatch, call: int, inside_cycle: bool) -> None:
    """Make the `call`-th optimizer step die: before it starts, or halfway through its micro-batches."""
    original, calls = loop._accumulate, [0]

    def accumulate(model, group, *args):
        calls[0] += 1
        if calls[0] == call:
            if inside_cycle:
                assert len(group) > 1, "the step must have micro-batches to die among"
                original(model, group[:1], *args)  # half a cycle's gradients, no optimizer step
            raise Killed
        return original(model, group, *args)

    monkeypatch.setattr(loop, "_accumulate", accumulate)


CASES = {
    # case: (regime, overrides, optimizer step to die on, inside an accumulation cycle)
    "full, mid-epoch": ("full", {"train.epochs": 3, "train.checkpoint_every_steps": 2}, 6, False),
    "lora, inside an accumulation cycle": ("lora", {"train.epochs": 3, "train.micro_batch_size": 4, "train.checkpoint_every_steps": 3}, 8, True),
    "staged, between its stages": ("staged", {"train.epochs": 2, "train.checkpoint_every_steps": 4}, 1, False),
    "full with L2-SP, mid-epoch": ("full", {"train.epochs": 2, "train.checkpoint_every_steps": 2, "train.l2sp": 0.1}, 5, False),
}


@pytest.mark.parametrize("case", CASES)
def test_a_killed_run_resumes_to_the_same_weights_and_metrics(case, tiny_bert, toy_csv, tmp_path, monkeypatch):
    regime, extra, call, inside = CASES[case]
    extra = {**extra, "train.eval_every_steps": 3}
    whole = runs.train(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "whole", regime, **extra))

    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        kill_on(m, call, inside)
        with pytest.raises(Killed):
            runs.train(None, tiny_overrides(tiny_bert, toy_csv, out, regime, **extra))
    staging = out.with_name("resumed.partial")
    check_complete(staging)
    assert not out.exists()
    state = json.loads((staging / json.loads((staging / checkpoint.POINTER).read_text())["last"] / "state.json").read_text())
    if regime == "staged":
        assert (state["stage"], state["loop"]) == (1, None), "the head stage's end is where it goes on from"
    else:
        assert 0 < state["loop"]["steps"] < call

    resumed = runs.train(None, tiny_overrides(tiny_bert, toy_csv, out, regime, **extra))
    assert resumed.metrics["test"] == whole.metrics["test"]
    assert weights_hash(out) == weights_hash(whole.dir)
    assert losses(out) == losses(whole.dir), "the log is cut back to the checkpoint and goes on as before"
    assert [s["best_step"] for s in resumed.metrics["stages"]] == [s["best_step"] for s in whole.metrics["stages"]]
    assert not staging.exists() and not list(out.glob("checkpoint*")), "a finished run keeps no checkpoints"


def test_augmented_images_resume_to_the_same_weights(tiny_cnn, toy_images, tmp_path, monkeypatch):
    """Random crops depend on (seed, epoch, item) only: the resumed run sees the crops it would have."""
    extra = {"train.epochs": 3, "train.checkpoint_every_steps": 2}
    whole = runs.train(None, image_overrides(tiny_cnn, toy_images, tmp_path / "whole", "full", **extra))
    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        kill_on(m, 7, False)
        with pytest.raises(Killed):
            runs.train(None, image_overrides(tiny_cnn, toy_images, out, "full", **extra))
    resumed = runs.train(None, image_overrides(tiny_cnn, toy_images, out, "full", **extra))
    assert resumed.metrics["test"] == whole.metrics["test"]
    assert weights_hash(out) == weights_hash(whole.dir)


def test_a_resumed_feature_extraction_does_not_run_the_backbone_again(tiny_bert, toy_csv, tmp_path, monkeypatch):
    out = tmp_path / "freeze"
    whole = runs.train(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "whole", "freeze"))

    def die(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as m:
        m.setitem(runs.SOLVERS, "lbfgs", die)  # dies as the head's fit starts: the features are cached by then
        with pytest.raises(Killed):
            runs.train(None, tiny_overrides(tiny_bert, toy_csv, out, "freeze"))
    assert (out.with_name("freeze.partial") / checkpoint.FEATURES).is_file()

    def no_backbone(*args, **kwargs):
        raise AssertionError("the features were computed again")

    monkeypatch.setattr(runs, "_cache_features", no_backbone)
    resumed = runs.train(None, tiny_overrides(tiny_bert, toy_csv, out, "freeze"))
    assert resumed.metrics["test"] == whole.metrics["test"]
    assert weights_hash(out) == weights_hash(whole.dir)


def test_a_checkpoint_of_another_configuration_is_refused(tiny_bert, toy_csv, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    extra = {"train.epochs": 2, "train.checkpoint_every_steps": 2}
    with monkeypatch.context() as m:
        kill_on(m, 5, False)
        with pytest.raises(Killed):
            runs.train(None, tiny_overrides(tiny_bert, toy_csv, out, "full", **extra))
    staging = out.with_name("run.partial")
    argv = ["train", *tiny_overrides(tiny_bert, toy_csv, out, "full", **{**extra, "train.lr": 3e-3})]
    check_refused(capsys, argv, staging, "another run", "train.lr", "--no-resume")

    # What only decides where and how often checkpoints are written does not make it another run.
    before = fingerprint(staging)
    run = runs.train(None, tiny_overrides(tiny_bert, toy_csv, out, "full", **{**extra, "train.checkpoint_every_steps": 5}))
    assert run.metrics["test"] and not staging.exists()
    assert before  # it was there, and was gone on from


def test_no_resume_starts_over_and_resume_needs_a_checkpoint(tiny_bert, toy_csv, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    extra = {"train.epochs": 2, "train.checkpoint_every_steps": 2}
    argv = ["train", "--resume", *tiny_overrides(tiny_bert, toy_csv, out, "full", **extra)]
    check_refused(capsys, argv, tmp_path, "no checkpoint", "--resume")

    with monkeypatch.context() as m:
        kill_on(m, 5, False)
        with pytest.raises(Killed):
            runs.train(None, tiny_overrides(tiny_bert, toy_csv, out, "full", **extra))
    with monkeypatch.context() as m:
        calls = []
        original = loop._accumulate
        m.setattr(loop, "_accumulate", lambda *a: calls.append(1) or original(*a))
        runs.train(None, tiny_overrides(tiny_bert, toy_csv, out, "full", **{**extra, "train.resume": "never"}))
    whole = runs.train(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "whole", "full", **extra))
    assert len(calls) == whole.metrics["stages"][0]["steps"], "--no-resume trains every step again"
    assert weights_hash(out) == weights_hash(whole.dir)


def test_a_half_written_checkpoint_is_never_resumed_from(tiny_bert, toy_csv, tmp_path, monkeypatch):
    """A kill while a checkpoint is written leaves only a .tmp folder, which is not one: the run goes on
    from the complete checkpoint before it."""
    out = tmp_path / "run"
    extra = {"train.epochs": 3, "train.checkpoint_every_steps": 2}
    whole = runs.train(None, tiny_overrides(tiny_bert, toy_csv, tmp_path / "whole", "full", **extra))
    original, writes = checkpoint.RunCheckpoints._write, [0]

    def dies_while_writing(self, stage, state):
        writes[0] += 1
        if writes[0] == 3:
            tmp = self.staging / ".checkpoint-3.tmp"
            tmp.mkdir()
            (tmp / "weights.safetensors").write_bytes(b"half")
            raise Killed
        return original(self, stage, state)

    with monkeypatch.context() as m:
        m.setattr(checkpoint.RunCheckpoints, "_write", dies_while_writing)
        with pytest.raises(Killed):
            runs.train(None, tiny_overrides(tiny_bert, toy_csv, out, "full", **extra))
    staging = out.with_name("run.partial")
    assert json.loads((staging / checkpoint.POINTER).read_text())["last"] == "checkpoint-2"
    resumed = runs.train(None, tiny_overrides(tiny_bert, toy_csv, out, "full", **extra))
    assert weights_hash(out) == weights_hash(whole.dir)
    assert resumed.metrics["test"] == whole.metrics["test"]


@pytest.mark.slow
def test_kill_9_at_twenty_random_moments_of_a_minilm_run(tmp_path):
    """The acceptance run: benchmarks/kill_resume.py kills MiniLM full fine-tuning on BBC News with
    SIGKILL 20 times (over as many runs as it takes), checks the checkpoint files after every kill, and compares
    each finished run's test metrics and weights with an uninterrupted run's."""
    import subprocess
    import sys

    from transferkit import assets

    for asset in (assets.MODELS["minilm-l6"], assets.DATASETS["bbc-news"]):
        if not asset.installed:
            pytest.skip(f"{asset.name} is not installed ({asset.install})")
    script = Path(__file__).parent.parent / "benchmarks" / "kill_resume.py"
    result = subprocess.run([sys.executable, str(script), "--kills", "20", "--json", str(tmp_path / "kills.json")],
                            capture_output=True, text=True, timeout=3600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = json.loads((tmp_path / "kills.json").read_text())["runs"]
    assert sum(len(r["kills"]) for r in runs) == 20 and all(r["same_metrics"] and r["same_weights"] for r in runs)
