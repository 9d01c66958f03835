"""Run folders that can never destroy anything, and atomic writes.

A run is built in `<run>.partial/` and renamed into place when it finishes: a rename within one file
system is atomic, so a reader sees the old run or the new one, never half of either. transferkit only
ever replaces or removes what it wrote itself: a run folder (recognised by the first line of its
config.yaml and by holding nothing but the files a run writes), a comparison folder, or its own
staging folder. Anything else at `--output` is refused, whatever the flags say.

A lock (`.lock`, flock'ed, holding the writer's pid) sits in the staging folder while a run is built,
so a second process aiming at the same folder stops at once; a lock whose process died is taken over.
Everything is written with the user's umask.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

CONFIG_HEADER = "# transferkit run configuration"
COMPARISON_HEADER = "# transferkit comparison configuration"
SEARCH_HEADER = "# transferkit search configuration"
LOCK = ".lock"
# What a run folder may hold: anything else in it is the user's and makes transferkit leave it alone.
RUN_FILES = {"config.yaml", "metrics.json", "metrics.jsonl", "report.html", "model", "README.md", "failure.json", "features", "tensorboard", LOCK}
COMPARISON_FILES = {"compare.yaml", "compare.md", "compare.json", "report.html", "README.md", LOCK}
RANGE_TEST_FILES = {"config.yaml", "lr_find.json", "report.html", LOCK}
SEARCH_FILES = {"tune.yaml", "tune.json", "tune.md", "best.yaml", "trials", "report.html", LOCK}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()


# --- what is ours ----------------------------------------------------------------------------------


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file()


def is_finished_comparison(folder: Path) -> bool:
    return (folder / "compare.json").is_file()


def is_search(folder: Path) -> bool:
    """A folder `transferkit tune` wrote: tune.yaml with our first line, and only a search's files."""
    return folder.is_dir() and _first_line(folder / "tune.yaml") == SEARCH_HEADER and not foreign_entries(folder, SEARCH_FILES)


def is_finished_search(folder: Path) -> bool:
    return (folder / "tune.json").is_file()


def is_range_test(folder: Path) -> bool:
    """A folder `transferkit lr-find` wrote: config.yaml with our first line and only its files."""
    return folder.is_dir() and _first_line(folder / "config.yaml") == CONFIG_HEADER and not foreign_entries(folder, RANGE_TEST_FILES)


def is_run(folder: Path) -> bool:
    """A folder transferkit wrote as a run: config.yaml with our first line (or a run from before that
    header: config.yaml beside metrics.jsonl), and nothing else than a run's files."""
    if not folder.is_dir() or not (folder / "config.yaml").is_file():
        return False
    if _first_line(folder / "config.yaml") != CONFIG_HEADER and not (folder / "metrics.jsonl").is_file():
        return False
    return not foreign_entries(folder, RUN_FILES)


def is_comparison(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    marked = _first_line(folder / "compare.yaml") == COMPARISON_HEADER or (folder / "compare.json").is_file()
    return marked and not [p for p in foreign_entries(folder, COMPARISON_FILES) if not (is_run(p) or is_search(p) or _is_staging(p))]


# What check_output and publish ask of each kind of folder: is it ours, what it may hold, is it finished.
KINDS = {
    "run": (is_run, RUN_FILES, is_finished),
    "comparison": (is_comparison, COMPARISON_FILES, is_finished_comparison),
    "search": (is_search, SEARCH_FILES, is_finished_search),
    "lr-find": (is_range_test, RANGE_TEST_FILES, lambda folder: (folder / "lr_find.json").is_file()),
}


def foreign_entries(folder: Path, ours: set[str]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name not in ours)


def staging_of(target: Path) -> Path:
    """Where the folder `target` is built (and an interrupted run's checkpoint stays): `<target>.partial`."""
    return target.with_name(target.name + ".partial")


def _is_staging(path: Path) -> bool:
    return path.name.endswith(".partial") and path.is_dir() and _staging_is_ours(path)


def _first_line(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\r\n")
    except OSError:
        return None


def check_output(target: Path, overwrite: bool, kind: str = "run") -> None:
    """Refuse, before any work, an --output that is not ours to write: the current folder or one above
    it, a file, a folder of the user's, or a finished run without --overwrite."""
    flag = "--output"
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UserError(f"{flag} '{target}' is the current folder or one above it; name a new folder, e.g. runs/my-run")
    if target.exists() and not target.is_dir():
        raise UserError(f"{flag} '{target}' is an existing file; name a folder that does not exist yet")
    empty = target.is_dir() and not any(target.iterdir())
    if target.is_dir() and not empty:
        ours, files, finished_kind = KINDS[kind]
        if not ours(target):
            what = kind
            extra = foreign_entries(target, files)
            shown = f" (it holds {extra[0].name})" if extra else ""
            raise UserError(
                f"{flag} '{target}' is a folder that transferkit did not write as a {what}{shown}; transferkit never "
                "replaces it, with or without --overwrite: name a new folder"
            )
        if finished_kind(target) and not overwrite:
            what = f"finished {kind}"
            raise UserError(f"'{target}' already holds a {what}; pass --overwrite to replace it or choose another --output")
    staging = staging_of(target)
    if staging.exists() and not (staging.is_dir() and _staging_is_ours(staging)):
        raise UserError(f"'{staging}' exists and was not written by transferkit; move it away or choose another --output")
    if (staging / LOCK).is_file():
        Lock.probe(staging, target)
    parent = next(p for p in [target.parent, *target.parent.parents] if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into '{parent}' (permission denied); choose another --output")


# --- staging, locking, publishing --------------------------------------------------------------------


class Lock:
    """An exclusive flock on `folder/.lock`, which holds our pid; released when this process ends."""

    def __init__(self, folder: Path, target: Path):
        self.path = folder / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            pid = os.read(self.fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise UserError(
                f"another transferkit process (pid {pid}) is writing '{target}'; wait for it to finish or choose another --output"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    @staticmethod
    def probe(folder: Path, target: Path) -> None:
        """Raise the 'another process' error if a live process holds the lock; change nothing."""
        try:
            fd = os.open(folder / LOCK, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"another transferkit process (pid {pid}) is writing '{target}'; wait for it to finish or choose another --output"
            ) from None
        finally:
            os.close(fd)

    def release(self, folder: Path | None = None) -> None:
        """Remove the lock file (from `folder`, where the staging folder was renamed to) and unlock."""
        path = (folder / LOCK) if folder is not None else self.path
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)


def _staging_is_ours(staging: Path) -> bool:
    names = {p.name for p in staging.iterdir()}
    return (not names or LOCK in names or _first_line(staging / "config.yaml") in (CONFIG_HEADER, COMPARISON_HEADER)
            or _first_line(staging / "tune.yaml") == SEARCH_HEADER)


def start_staging(run_dir: Path, keep: Callable[[Path], bool] = lambda entry: False) -> tuple[Path, Lock]:
    """The staging folder beside `run_dir`, locked, empty of anything a dead earlier run left in it
    but what `keep` says (the checkpoint a resumed run goes on from)."""
    staging = staging_of(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(staging, 0o777 & ~UMASK)
    except FileExistsError:
        if not (staging.is_dir() and _staging_is_ours(staging)):
            raise UserError(f"'{staging}' exists and was not written by transferkit; move it away or choose another --output") from None
    lock = Lock(staging, run_dir)
    for entry in staging.iterdir():  # left by a run that died: ours, and no process holds it any more
        if entry.name != LOCK and not keep(entry):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return staging, lock


def discard_staging(staging: Path, lock: Lock) -> None:
    lock.release()
    shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, run_dir: Path, lock: Lock, kind: str = "run") -> None:
    """Swap the finished staging folder in for `run_dir` (which, if it exists, is ours: checked again)."""
    if run_dir.exists() and run_dir.is_dir() and any(run_dir.iterdir()):
        if not KINDS[kind][0](run_dir):
            lock.release()
            raise UserError(f"'{run_dir}' appeared while this ran and is not transferkit's; the result is in '{staging}'")
        old = run_dir.with_name(f".{run_dir.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(run_dir, old)
        os.replace(staging, run_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if run_dir.is_dir():
            run_dir.rmdir()  # an empty folder: nothing in it to lose
        os.replace(staging, run_dir)
    lock.release(run_dir)


def publish_failed(staging: Path, run_dir: Path, lock: Lock) -> Path:
    """Where a failed run's last good checkpoint stays: the run folder, unless that holds a finished run."""
    if is_finished(run_dir):
        lock.release()
        return staging
    publish(staging, run_dir, lock)
    return run_dir


# --- atomic writes ---------------------------------------------------------------------------------


def write_text(path: Path, text: str) -> None:
    """Write `text` (exactly: no newline translation) under a temporary name, then rename it into place."""
    write_bytes(path, lambda tmp: Path(tmp).write_bytes(text.encode("utf-8")))


def write_bytes(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp_path)` fills a temporary file beside `path`, which is then renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; a file we write follows the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(write: Callable[[Path], None], target: Path) -> None:
    """Call `write(tmp_dir)`, then swap the finished folder in for `target` (a folder of ours)."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes 0700
    try:
        write(tmp)
        follow_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def follow_umask(folder: Path) -> None:
    """Give what was just written into `folder` the user's umask (some writers, e.g. safetensors', make 0600)."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~UMASK)


def save_model(model, target: Path) -> None:
    """Write `model.save(folder)` into a temporary folder, then swap it in for `target`."""
    replace_dir(model.save, target)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
