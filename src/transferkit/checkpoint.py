"""Writing run artefacts so that a crash never leaves a half-written file or model folder.

Everything is written under a temporary name in the same folder and renamed into place:
a rename within one file system is atomic, so readers see the old artefact or the new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file()


def is_finished_comparison(folder: Path) -> bool:
    return (folder / "compare.json").is_file()


def start_staging(run_dir: Path) -> Path:
    """An empty folder beside the run folder where the run is built until it finishes.

    The run folder itself changes only when the new run is complete (or when it failed and
    there was no finished run to keep), so an earlier run is never half-replaced.
    """
    staging = run_dir.with_name(run_dir.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)  # left by a run that crashed or was interrupted
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, run_dir: Path) -> None:
    """Swap the finished staging folder in for the run folder."""
    old = run_dir.with_name(run_dir.name + ".old")
    if run_dir.exists():
        os.replace(run_dir, old)
    os.replace(staging, run_dir)
    shutil.rmtree(old, ignore_errors=True)


def publish_failed(staging: Path, run_dir: Path) -> Path:
    """Where a failed run's last good checkpoint stays: the run folder, unless that holds a finished run."""
    if is_finished(run_dir):
        return staging
    publish(staging, run_dir)
    return run_dir


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


def save_model(model, target: Path) -> None:
    """Write `model.save(folder)` into a temporary folder, then swap it in for `target`."""
    replace_dir(model.save, target)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
