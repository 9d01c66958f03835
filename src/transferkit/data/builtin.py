"""The built-in datasets, read from the packages that ship them (see assets.py)."""

from __future__ import annotations

import csv
import hashlib

from .. import assets
from .examples import Examples, TextSource
from .images import read_fashion_mnist


def read_builtin_test(name: str) -> Examples | None:
    """The official test split of a built-in dataset that has one (None: split it off)."""
    if name == "fashion-mnist":
        return read_fashion_mnist(assets.DATASETS[name].path(), "t10k")
    return None


def read_builtin(name: str) -> Examples:
    """One of the built-in datasets, as a single pool of examples (split later)."""
    root = assets.DATASETS[name].path()
    if name == "bbc-news":
        # Files sorted by path so that the same seed gives the same split on every machine. A few
        # articles hold a stray non-UTF-8 byte; it becomes U+FFFD here (ours to read, not a user's file).
        files = sorted(p for p in root.glob("*/*.txt"))
        return in_memory_texts([p.read_text(encoding="utf-8", errors="replace") for p in files], [p.parent.name for p in files])
    if name == "tweet-sentiment":
        # Not UTF-8 throughout (a few Latin-1 bytes): ours to read leniently, as the U+FFFD character.
        with open(root, encoding="utf-8", errors="replace", newline="") as f:
            rows = list(csv.DictReader(f))
        return in_memory_texts([r["text"] for r in rows], [r["sentiment"].strip() for r in rows])
    if name == "fashion-mnist":
        return read_fashion_mnist(root, "train")
    raise AssertionError(f"no reader for built-in dataset {name}")


def in_memory_texts(texts: list[str], labels: list[str] | None) -> Examples:
    """Texts held in memory as a Dataset with a content fingerprint, so their tokens are cached too."""
    import datasets

    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    rows = datasets.Dataset.from_dict({"text": texts})
    return Examples(rows["text"], labels, source=TextSource(rows, "text", digest.hexdigest()))
