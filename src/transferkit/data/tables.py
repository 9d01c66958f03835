"""Read labelled examples from CSV / JSONL files and from the built-in datasets."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import assets
from ..errors import UserError


@dataclass
class Examples:
    """Parallel lists of inputs (texts, image files, arrays) and their labels (as strings)."""

    inputs: list
    labels: list[str] | None
    skipped: list[str] = field(default_factory=list)
    """Files found beside the data but not read (not images), to report."""

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: list[int]) -> Examples:
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return Examples([self.inputs[i] for i in indices], labels)


def read_rows(path: str | Path) -> list[dict]:
    """All rows of a CSV or JSONL file as dicts."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"data path '{path}' is a folder, not a file; pass a CSV or JSONL file")
    if not path.is_file():
        raise UserError(f"data file '{path}' does not exist; check the path")
    suffix = path.suffix.lower()
    try:
        # errors="replace": real-world exports often carry a few bad bytes; losing the whole file
        # to one of them would be worse than a replacement character in one text.
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as e:
        raise UserError(f"cannot read data file '{path}' ({e.strerror}); check its permissions") from None
    if suffix in (".jsonl", ".json"):
        return _parse_jsonl(text, path)
    if suffix in (".csv", ".tsv"):
        return list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
    raise UserError(f"data file '{path}' has an unknown type '{suffix}'; use .csv, .tsv or .jsonl")


def _parse_jsonl(text: str, path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number} is not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number} is not a JSON object; each line must be one object with named fields")
        rows.append(row)
    return rows


def read_examples(path: str | Path, text_column: str, label_column: str) -> Examples:
    """Labelled examples from one CSV / JSONL file, with clear errors for missing columns."""
    rows = read_rows(path)
    if not rows:
        raise UserError(f"data file '{path}' holds no examples; give a file with a header and at least one row")
    for column in (text_column, label_column):
        if column not in rows[0]:
            found = ", ".join(str(k) for k in rows[0])
            flag = "--text-column" if column == text_column else "--label-column"
            raise UserError(f"data file '{path}' has no column '{column}' (it has: {found}); name the right one with {flag}")
    texts, labels = [], []
    for number, row in enumerate(rows, start=2 if Path(path).suffix.lower() in (".csv", ".tsv") else 1):
        text, label = row.get(text_column), row.get(label_column)
        if label is None or str(label).strip() == "":
            raise UserError(f"{path}: row {number} has no label in column '{label_column}'; fill it in or remove the row")
        texts.append("" if text is None else str(text))
        labels.append(str(label).strip())
    return Examples(texts, labels)


def read_texts(path: str | Path, text_column: str) -> list[str]:
    """Unlabelled inputs (for `predict`): one text per row."""
    rows = read_rows(path)
    if not rows:
        raise UserError(f"input file '{path}' holds no rows; give at least one")
    if text_column not in rows[0]:
        found = ", ".join(str(k) for k in rows[0])
        raise UserError(f"input file '{path}' has no column '{text_column}' (it has: {found}); name it with --text-column")
    return ["" if row.get(text_column) is None else str(row[text_column]) for row in rows]


def read_builtin_test(name: str) -> Examples | None:
    """The official test split of a built-in dataset that has one (None: split it off)."""
    if name == "fashion-mnist":
        from .images import read_fashion_mnist

        return read_fashion_mnist(assets.DATASETS[name].path(), "t10k")
    return None


def read_builtin(name: str) -> Examples:
    """One of the built-in datasets, as a single pool of examples (split later)."""
    root = assets.DATASETS[name].path()
    if name == "bbc-news":
        # Files sorted by path so that the same seed gives the same split on every machine.
        files = sorted(p for p in root.glob("*/*.txt"))
        return Examples([p.read_text(encoding="utf-8", errors="replace") for p in files], [p.parent.name for p in files])
    if name == "tweet-sentiment":
        return read_examples(root, text_column="text", label_column="sentiment")
    if name == "fashion-mnist":
        from .images import read_fashion_mnist

        return read_fashion_mnist(root, "train")
    raise AssertionError(f"no reader for built-in dataset {name}")
