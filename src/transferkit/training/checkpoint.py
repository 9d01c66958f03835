"""Checkpoints while a run trains, and an exact resume from the last one.

A run's checkpoints live in its staging folder (runs/<name>.partial/, see folders.py), beside the
metrics.jsonl they belong to:

    checkpoint.json          names the last complete checkpoint; replaced atomically, and only after
                             that checkpoint is complete, so it never points at half of one
    checkpoint-<n>/          one checkpoint, written as .checkpoint-<n>.tmp/ and renamed when complete:
        state.json           the stage in progress, the loop's position and early-stopping record,
                             the finished stages' summaries, how long metrics.jsonl was, the Python and
                             NumPy RNG states, and the configuration and data the run belongs to
        rng.safetensors      the torch RNG states (CPU and each CUDA device)
        weights.safetensors  every parameter a stage has trained so far, and every buffer
        best.safetensors     the best validated weights of the stage in progress
        anchors.safetensors  with train.l2sp: the weights the stage started from, which the penalty pulls toward
        optimizer.pt, scheduler.pt   tensors, numbers and lists only: read back with weights_only=True
    features.pt              the frozen backbone's cached features (freeze, staged's head stage),
                             written once: a resumed run does not run the backbone again

Only the last checkpoint is kept. What it restores, with what the run recomputes the same way on the
way back (the data, the tokens, the model as loaded, each stage's `apply`), is the whole state of the
run: a resumed run ends with the same weights and metrics as one never stopped, bit for bit on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .. import folders
from ..errors import UserError
from .loop import Checkpoints, LoopState, restore

POINTER = "checkpoint.json"
FEATURES = "features.pt"
# Settings that change where and how often a run writes, not what it computes: a checkpoint taken
# under other values still resumes.
NOT_COMPARED = {"output", "overwrite", "train.resume", "train.report_to", "train.checkpoint_every_steps", "train.checkpoint_minutes"}
# A checkpoint may cost at most 1/COST_SHARE of the time between two: a slow one (a large model) is
# taken less often than train.checkpoint_minutes says.
COST_SHARE = 40


@dataclass
class Resumed:
    """The checkpoint a run goes on from."""

    folder: Path
    state: dict

    @property
    def stage(self) -> int:
        """The stage in progress (the number of stages: all finished, the test is what is left)."""
        return self.state["stage"]

    @property
    def describe(self) -> str:
        loop = self.state.get("loop")
        if loop:
            where = f"step {loop['steps']} of stage {self.stage + 1}"
        else:
            where = "the end of training" if self.stage >= self.state["stages"] else f"the start of stage {self.stage + 1}"
        return f"{where} ({self.state['saved_at']})"


def fingerprint(splits) -> str:
    """A hash of every split's inputs and targets: a checkpoint resumes only on the data it was taken on."""
    digest = hashlib.sha256()
    for name in ("train", "validation", "test"):
        examples = getattr(splits, name)
        digest.update(f"{name}:{len(examples)}".encode())
        for column in (examples.inputs, examples.labels, examples.pairs):
            for value in column if column is not None else ():
                digest.update(_bytes(value))
    return digest.hexdigest()


def _bytes(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass") + b"\0"
    if isinstance(value, np.ndarray):
        return value.tobytes() + str(value.shape).encode()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str).encode() + b"\0"
    return repr(value).encode() + b"\0"


def find(staging: Path, config: dict, data: str, mode: str) -> Resumed | None:
    """The checkpoint in `staging` to resume from, as `mode` (train.resume / --resume) says: auto (the
    last checkpoint, when it belongs to this configuration and data; another's is refused), always (as
    auto, and no checkpoint is an error) or never (start over; the old checkpoint is discarded).
    Reads only."""
    pointer = staging / POINTER
    if mode == "never" or not pointer.is_file():
        if mode == "always":
            raise UserError(f"--resume: '{staging}' holds no checkpoint to resume from; run without --resume to start")
        return None
    try:
        folder = staging / json.loads(pointer.read_text())["last"]
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"the checkpoint in '{staging}' cannot be read ({e}); pass --no-resume to start over") from None
    differs = differences(state["config"], config)
    if state["data"] != data:
        differs.insert(0, "the data (its inputs or targets changed)")
    if differs:
        raise UserError(f"'{staging}' holds a checkpoint of another run: {'; '.join(differs[:3])}; pass --no-resume "
                        "to discard it and start over, or choose another --output")  # fmt: skip
    return Resumed(folder, state)


def differences(then: dict, now: dict) -> list[str]:
    """What differs between two configurations (as dicts), but for what only says where and how often a run writes."""
    a, b = _flat(then), _flat(now)
    keys = sorted((set(a) | set(b)) - NOT_COMPARED)
    return [f"{k} was {a.get(k)!r}, now {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def exists(staging: Path) -> bool:
    return (staging / POINTER).is_file()


def remove(staging: Path) -> None:
    """A finished (or failed) run keeps no checkpoints: they served their purpose and take room."""
    (staging / POINTER).unlink(missing_ok=True)  # first: nothing points at a checkpoint being deleted
    (staging / FEATURES).unlink(missing_ok=True)
    for entry in staging.iterdir():
        if _is_checkpoint(entry):
            _delete(entry)


def _delete(folder: Path) -> None:
    """Renamed out of the checkpoint names first (atomic), then deleted: a kill in the middle leaves a
    folder that is plainly not a checkpoint, never one that looks complete and is not."""
    if not folder.name.startswith("."):
        hidden = folder.with_name(f".{folder.name}.deleting")
        folder.rename(hidden)
        folder = hidden
    shutil.rmtree(folder, ignore_errors=True)


def is_checkpoint_file(entry: Path) -> bool:
    """What a resumed run keeps of its staging folder: its checkpoints and the log they point into."""
    return entry.name in (POINTER, FEATURES, "metrics.jsonl") or _is_checkpoint(entry)


class RunCheckpoints(Checkpoints):
    """A run's checkpoints: saved as a stage is ready to fit (when earlier stages or the cached
    features are worth keeping), as the loop says they are due, and when training is done; the state
    is handed back, once, to the stage that was in progress."""

    def __init__(self, staging: Path, config: dict, data: str, stages: int, every_steps: int | None, minutes: float | None,
                 resumed: Resumed | None = None):  # fmt: skip
        self.staging, self.config, self.data, self.stages = staging, config, data, stages
        self.every_steps, self.interval = every_steps, (minutes or 0) * 60
        self.resumed = resumed
        self.count = int(resumed.folder.name.split("-")[-1]) if resumed else 0
        self.next_due = time.monotonic() + self.interval
        self.stage, self.model, self.summary, self.log_file = 0, None, {}, None
        self.trained: set[str] = _names(resumed.folder / "weights.safetensors") if resumed else set()
        self.written, self.seconds = 0, 0.0  # by this process: what checkpointing cost the run

    # --- what runs.py tells it -----------------------------------------------------------------------

    def begin_stage(self, index: int, model: torch.nn.Module, summary: dict) -> None:
        """Stage `index` is about to train `model`'s parameters that require grad; `summary` is the
        run's record of its finished stages (metrics.json's "stages", "cache_seconds")."""
        self.stage, self.model, self.summary = index, model, summary
        self.trained |= {n for n, p in model.named_parameters() if p.requires_grad}

    def stage_ready(self, worth_saving: bool) -> None:
        """The stage is set up to fit (its parameters chosen, the features cached): a checkpoint here
        keeps the earlier stages' work, or the features, when `worth_saving`."""
        if worth_saving and not (self.resumed and self.resumed.stage == self.stage):
            self._write(self.stage, None)

    def training_done(self) -> None:
        """Every stage has fit: a checkpoint here leaves only the test to do again."""
        self._write(self.stage + 1, None)

    def testing(self) -> None:
        """A run that goes on from `training_done`'s checkpoint gets its RNGs back before the test."""
        if self.resumed is not None and self.resumed.stage == self.stages:
            _set_rng(self.resumed.state["rng"], load_file(self.resumed.folder / "rng.safetensors"))

    def restore_weights(self, model: torch.nn.Module) -> None:
        """Put the checkpoint's trained parameters and buffers back into `model`."""
        restore(model, load_file(self.resumed.folder / "weights.safetensors"))

    def features(self) -> dict | None:
        path = self.staging / FEATURES
        return torch.load(path, weights_only=True) if path.is_file() else None

    def save_features(self, features: dict) -> None:
        folders.write_bytes(self.staging / FEATURES, lambda tmp: torch.save(features, tmp))


    # --- what the loop asks ----------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.interval) and time.monotonic() >= self.next_due

    def save(self, state: LoopState) -> None:
        self._write(self.stage, state)

    def resume(self) -> LoopState | None:
        resumed = self.resumed
        if resumed is None or resumed.stage != self.stage:
            return None
        self.resumed = None  # handed over once
        folder, loop = resumed.folder, resumed.state["loop"]
        _set_rng(resumed.state["rng"], load_file(folder / "rng.safetensors"))
        if not loop:
            return None  # taken as the stage was ready to start (stage_ready)
        return LoopState(
            loop["steps"], loop["examples"], loop["seconds"],
            torch.load(folder / "optimizer.pt", weights_only=True), torch.load(folder / "scheduler.pt", weights_only=True),
            loop["best"], load_file(folder / "best.safetensors"), loop["tokens"], loop["step_seconds"], _anchors(folder),
        )  # fmt: skip

    # --- writing -------------------------------------------------------------------------------------

    def _write(self, stage: int, loop: LoopState | None) -> None:
        started = time.monotonic()
        self.count += 1
        name = f"checkpoint-{self.count}"
        tmp = self.staging / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if self.log_file is not None:
            self.log_file.flush()
        python_rng, numpy_rng, torch_rng = _rng()
        state = {
            "stage": stage,
            "stages": self.stages,
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "summary": self.summary,
            "log_bytes": self.log_file.tell() if self.log_file is not None else 0,
            "rng": {"python": python_rng, "numpy": numpy_rng},
            "config": self.config,
            "data": self.data,
            "loop": None,
        }
        save_file(torch_rng, tmp / "rng.safetensors")
        trained = {n: p for n, p in self.model.named_parameters() if n in self.trained}
        save_file(_unshared(trained | dict(self.model.named_buffers())), tmp / "weights.safetensors")
        if loop is not None:
            state["loop"] = {"steps": loop.steps, "examples": loop.examples, "seconds": loop.seconds, "best": loop.best,
                             "tokens": loop.tokens, "step_seconds": loop.step_seconds}  # fmt: skip
            save_file(_unshared(loop.best_weights), tmp / "best.safetensors")
            if loop.anchors:
                save_file(_unshared({str(i): a for i, a in enumerate(loop.anchors)}), tmp / "anchors.safetensors")
            torch.save(loop.optimizer, tmp / "optimizer.pt")
            torch.save(loop.scheduler, tmp / "scheduler.pt")
        # NumPy scalars (a metric some task computed with NumPy) as the numbers they are.
        (tmp / "state.json").write_text(json.dumps(state, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
        folders.follow_umask(tmp)
        tmp.rename(self.staging / name)  # complete: only now does it carry a checkpoint's name
        folders.write_text(self.staging / POINTER, json.dumps({"last": name}))
        for entry in self.staging.iterdir():  # the older ones, and any a kill left half-written or half-deleted
            if _is_checkpoint(entry) and entry.name != name:
                _delete(entry)
        seconds = time.monotonic() - started
        self.written, self.seconds = self.written + 1, self.seconds + seconds
        self.next_due = time.monotonic() + max(self.interval, COST_SHARE * seconds)


def _names(path: Path) -> set[str]:
    """The tensor names in a safetensors file, read from its header alone."""
    with safe_open(path, framework="pt") as f:
        return set(f.keys())


def _anchors(folder: Path) -> list[torch.Tensor]:
    path = folder / "anchors.safetensors"
    if not path.is_file():
        return []
    tensors = load_file(path)
    return [tensors[str(i)] for i in range(len(tensors))]


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, none sharing memory with another (safetensors refuses shared ones)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().contiguous()
        pointer = t.untyped_storage().data_ptr()
        out[name] = t.clone() if pointer in seen else t
        seen.add(pointer)
    return out


def _is_checkpoint(entry: Path) -> bool:
    """A checkpoint folder, or one being written (.tmp) or deleted (.deleting)."""
    return entry.is_dir() and (entry.name.startswith("checkpoint-") or entry.name.startswith(".checkpoint-"))


def _rng() -> tuple[list, list, dict[str, torch.Tensor]]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return _lists(random.getstate()), [kind, keys.tolist(), pos, has_gauss, gauss], tensors


def _set_rng(state: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _lists(value):
    return [_lists(v) for v in value] if isinstance(value, tuple) else value


class NoCheckpoints(RunCheckpoints):
    """A run that takes none (a search trial, a run of several processes): every write is left out."""

    def __init__(self, staging: Path):
        super().__init__(staging, {}, "", 0, None, None)

    def _write(self, stage: int, loop: LoopState | None) -> None: ...

    def features(self) -> dict | None:
        return None

    def save_features(self, features: dict) -> None: ...
