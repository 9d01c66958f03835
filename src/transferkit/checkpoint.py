"""Writing run artefacts so that a crash never leaves a half-written file or model folder.

Everything is written under a temporary name in the same folder and renamed into place:
a rename within one file system is atomic, so readers see the old artefact or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def start_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run folder; with `overwrite`, clear what an earlier run left there."""
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(write, target: Path) -> None:
    """Call `write(tmp_dir)`, then swap the finished folder in for `target`."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def save_model(model, target: Path, label_names: list[str]) -> None:
    """Save a TextClassifier: a Hugging Face folder, or a PEFT adapter folder (adapter + head).

    Weights go out as safetensors. The label names travel in the model config (id2label) and,
    for adapters, in labels.json, since the base model's config is not part of an adapter folder.
    """

    def write(folder: Path) -> None:
        model.hf.save_pretrained(folder, safe_serialization=True)
        model.tokenizer.save_pretrained(folder)
        (folder / "labels.json").write_text(json.dumps(label_names))

    replace_dir(write, target)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
