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
    labels: list | None
    """What the task learns from each input: a label (classification), target values (regression), a
    set of labels (multi-label); None for unlabelled inputs."""
    skipped: list[str] = field(default_factory=list)
    """Files found beside the data but not read (not images), to report."""
    source: TextSource | None = None
    indices: list[int] | None = None
    """Rows of `source` these examples are, in order (None: all of them)."""
    pairs: Sequence | None = None
    """The second text of each input, for text-pair tasks (inference, paraphrase, similarity)."""

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: list[int]) -> Examples:
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        if self.source is not None:
            rows = [self.indices[i] for i in indices] if self.indices is not None else list(indices)
            pairs = None if self.source.pair_column is None else self.source.texts(rows, self.source.pair_column)
            return Examples(self.source.texts(rows), labels, source=self.source, indices=rows, pairs=pairs)
        pairs = None if self.pairs is None else [self.pairs[i] for i in indices]
        return Examples([self.inputs[i] for i in indices], labels, pairs=pairs)


@dataclass
class TextSource:
    """The texts of one table: the rows (a datasets.Dataset), which column, and a fingerprint of the content."""

    rows: object  # datasets.Dataset
    column: str
    fingerprint: str
    pair_column: str | None = None
    """The column of each pair's second text, for text-pair tasks."""

    def texts(self, indices: list[int] | None = None, column: str | None = None):
        rows = self.rows if indices is None else self.rows.select(indices)
        return rows[column or self.column]
