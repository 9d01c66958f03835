"""Examples: inputs and what a task learns from them, one split or one pool."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Examples:
    """Inputs and what the task learns from them (label strings), one split or one pool.

    `inputs` are texts (a lazy column of a memory-mapped `datasets.Dataset` when read from a table),
    image files or arrays, or generation examples (dicts). `source` and `indices` say where text inputs
    came from, so that their tokens are computed once per file and tokenizer (data/tokens.py).
    """

    inputs: Sequence
    labels: list[str] | None
    skipped: list[str] = field(default_factory=list)
    """Files found beside the data but not read (not images), to report."""
    source: TextSource | None = None
    indices: list[int] | None = None
    """Rows of `source` these examples are, in order (None: all of them)."""

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: list[int]) -> Examples:
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        if self.source is not None:
            rows = [self.indices[i] for i in indices] if self.indices is not None else list(indices)
            return Examples(self.source.texts(rows), labels, source=self.source, indices=rows)
        return Examples([self.inputs[i] for i in indices], labels)


@dataclass
class TextSource:
    """The texts of one table: the rows (a datasets.Dataset), which column, and a fingerprint of the content."""

    rows: object  # datasets.Dataset
    column: str
    fingerprint: str

    def texts(self, indices: list[int] | None = None):
        rows = self.rows if indices is None else self.rows.select(indices)
        return rows[self.column]
