"""Reading a task's data and splitting it, seeded: stratified by class for classification (every class
keeps its share in train, validation and test), at random for the other tasks."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .. import assets
from ..errors import UserError
from .builtin import builtin_table, read_builtin, read_builtin_test
from .examples import Examples, TextSource
from .tables import TABLE_SUFFIXES, labels_of, read_table, saved_splits, texts_of


@dataclass
class Splits:
    train: Examples
    validation: Examples
    test: Examples
    label_names: list[str]
    modality: str = "text"
    """What the inputs are: "text" or "image" (file paths or uint8 arrays)."""
    skipped: list[str] = field(default_factory=list)
    """Files in the data folders that were not read (not images)."""


def read_labelled(name: str, data) -> Examples:
    """Labelled examples of a built-in set, a table (CSV, TSV, JSONL, JSON, Parquet, a saved dataset)
    or an image folder (one sub-folder per class); `data` (a DataConfig) names the columns."""
    if is_image_folder(name):
        from .images import read_image_folder

        return read_image_folder(name)
    if name in assets.DATASETS and assets.DATASETS[name].modality == "image":
        return read_builtin(name)
    table, columns = open_table(name, data)
    return examples_of(table, columns, labels_of(table, columns.label, "--label-column"))


@dataclass(frozen=True)
class Columns:
    """Which columns of a table hold the text, the second text of a pair, and what the task learns."""

    text: str
    pair: str | None
    label: str


def open_table(name: str, data) -> tuple:
    """(Table, Columns) of a built-in text set or a data file; built-in sets bring their own column names."""
    if name in assets.DATASETS:
        asset = assets.DATASETS[name]
        pair = data.pair_column or ("pair" if asset.pair else None)
        return builtin_table(name), Columns("text", pair, "label")
    table = read_table(name)
    if not len(table.rows):
        raise UserError(f"data file '{name}' holds no examples; give a file with a header and at least one row")
    return table, Columns(data.text_column, data.pair_column, data.label_column)


def examples_of(table, columns: Columns, targets: list) -> Examples:
    """The table's texts (and second texts of pairs) with `targets`, one per row."""
    texts, source = texts_of(table, columns.text)
    pairs = None
    if columns.pair is not None:
        pairs, _ = texts_of(table, columns.pair, "--pair-column")
        source = TextSource(source.rows, source.column, f"{source.fingerprint}:{columns.pair}", columns.pair)
    return Examples(texts, targets, source=source, pairs=pairs)


def is_image_folder(path: str) -> bool:
    from .tables import _is_saved_dataset

    return Path(path).is_dir() and Path(path).suffix.lower() not in TABLE_SUFFIXES and not _is_saved_dataset(Path(path))


def load_splits(cfg, seed: int, read=None, stratify: bool = True, groups=None) -> Splits:
    """Read the data that `cfg` (a DataConfig) names and split it into train / validation / test.

    `read(name) -> Examples` reads one pool (default: labelled examples for classification). With
    `stratify` every class keeps its share in each split; without (regression, multi-label), the
    split is at random. `groups(examples) -> keys` keeps the examples of one key in one split
    (question answering: every question on a context). Either way it is seeded: the same seed, the
    same split, on every machine.
    """
    read = read or (lambda name: read_labelled(name, cfg))
    if cfg.name in assets.DATASETS:
        modality, builtin_test = assets.DATASETS[cfg.name].modality, read_builtin_test(cfg.name)
    elif Path(cfg.name).suffix.lower() in TABLE_SUFFIXES or Path(cfg.name).exists():
        modality, builtin_test = ("image" if is_image_folder(cfg.name) else "text"), None
    else:
        known = ", ".join(assets.DATASETS)
        raise UserError(
            f"dataset '{cfg.name}' is neither a built-in name ({known}) nor a CSV / JSONL file or image folder; check the name"
        )
    pool = read(cfg.name)
    saved = saved_splits(cfg.name) if modality == "text" else {}  # a saved DatasetDict brings its own splits
    validation = read(cfg.validation) if cfg.validation else _saved_split(saved, "validation", read)
    test = read(cfg.test) if cfg.test else (_saved_split(saved, "test", read) or builtin_test or _official_test(cfg.name, read))
    skipped = [path for examples in (pool, validation, test) if examples is not None for path in examples.skipped]
    fractions = {}
    if test is None:
        fractions["test"] = cfg.test_fraction
    if validation is None:
        fractions["validation"] = cfg.validation_fraction
    if groups is not None:
        parts = grouped_split(groups(pool), fractions, seed, cfg.name)
    else:
        parts = stratified_split(pool.labels, fractions, seed) if stratify else random_split(len(pool), fractions, seed, cfg.name)
    train = pool.subset(parts.pop("train"))
    validation = pool.subset(parts["validation"]) if validation is None else validation
    test = pool.subset(parts["test"]) if test is None else test

    subset = stratified_subset if stratify else lambda labels, size, seed, key="data.train_size": random_subset(len(labels), size, seed)
    if cfg.train_size is not None:
        train = train.subset(subset(train.labels, cfg.train_size, seed))
    validation_size = cfg.validation_size
    if validation_size is None and cfg.train_size is not None and "validation" in fractions:
        validation_size = _validation_for(cfg.train_size, fractions, len(validation))
    # Held-out subsets with a fixed seed: runs with different train.seed compare on the same examples.
    if validation_size is not None:
        validation = validation.subset(subset(validation.labels, validation_size, 0, "data.validation_size"))
    if cfg.test_size is not None:
        test = test.subset(subset(test.labels, cfg.test_size, 0, "data.test_size"))
    label_names = sort_labels(set(train.labels)) if stratify else []
    if stratify:
        for split_name, split in (("validation", validation), ("test", test)):
            unseen = sorted(set(split.labels) - set(label_names))
            if unseen:
                raise UserError(
                    f"label '{unseen[0]}' is in the {split_name} data but never in training; "
                    f"add training examples of it or remove it from the {split_name} data"
                )
        if len(label_names) < 2:
            raise UserError(f"the training data has a single label ('{label_names[0]}'); a classifier needs at least two")
    return Splits(train, validation, test, label_names, modality, skipped)


SUBSET_VALIDATION = 500  # the least a validation split is cut to for data.train_size: one example moves accuracy 0.2 points


def _validation_for(train_size: int, fractions: dict[str, float], held_out: int) -> int | None:
    """The validation size for a training subset of a large pool: what a pool split into `train_size`
    training examples would have held out, and never under SUBSET_VALIDATION. Without it, 4,000 of
    SQuAD's 87,599 questions validate on 8,748 each epoch. None: the held-out split is small enough."""
    share = fractions["validation"] / (1 - sum(fractions.values()))
    size = max(SUBSET_VALIDATION, round(train_size * share))
    if held_out <= size:
        return None
    from .tables import warn

    warn(f"validating on {size:,} of the {held_out:,} held-out examples, in proportion to data.train_size={train_size:,}; "
         "set data.validation_size to choose another number")  # fmt: skip
    return size


def _saved_split(saved: dict, name: str, read) -> Examples | None:
    return read(saved[name]) if name in saved else None


def _official_test(name: str, read) -> Examples | None:
    """A built-in set's official test file (SQuAD's dev set), read as its data is."""
    asset = assets.DATASETS.get(name)
    return read(str(asset.test())) if asset is not None and asset.test is not None else None


def load_generation_splits(cfg, seed: int) -> Splits:
    """Generation examples (no labels) split at random with `seed`, or the user's own files."""
    from .generation import read_generation

    def read(name):
        examples = read_generation(name, cfg.text_column)
        return Examples(examples.inputs, [None] * len(examples))  # nothing to stratify by

    splits = load_splits(cfg, seed, read=read, stratify=False)
    for part in (splits.train, splits.validation, splits.test):
        part.labels = None
    return splits


def random_split(n: int, fractions: dict[str, float], seed: int, name: str = "the data") -> dict[str, list[int]]:
    """Indices for 'train' and each named held-out part, drawn at random with `seed`."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    take = {part: max(1, round(n * fraction)) for part, fraction in fractions.items()}
    if n <= sum(take.values()):
        raise UserError(f"'{name}' holds {n} example(s), too few to split off validation and test; give more or pass --validation/--test files")
    parts, start = {}, 0
    for part in fractions:
        parts[part] = sorted(order[start : start + take[part]])
        start += take[part]
    return {"train": sorted(order[start:]), **parts}


def grouped_split(keys: list, fractions: dict[str, float], seed: int, name: str = "the data") -> dict[str, list[int]]:
    """Like random_split, but whole groups at a time: every example of a key lands in the same part."""
    members: dict = defaultdict(list)
    for i, key in enumerate(keys):
        members[key].append(i)
    groups = list(members)  # in order of first appearance: the seed alone decides the shuffle
    if len(groups) <= sum(max(1, round(len(groups) * f)) for f in fractions.values()):
        raise UserError(f"'{name}' holds {len(groups)} context(s), too few to split off validation and test (a context's "
                        "questions stay together); give more or pass --validation/--test files")  # fmt: skip
    parts = random_split(len(groups), fractions, seed, name)
    return {part: sorted(i for g in chosen for i in members[groups[g]]) for part, chosen in parts.items()}


def random_subset(n: int, size: int, seed: int) -> list[int]:
    return list(range(n)) if size >= n else sorted(random.Random(seed).sample(range(n), size))


def stratified_split(labels: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Indices for 'train' and each named held-out part, every class split in the same proportions."""
    rng = random.Random(seed)
    parts: dict[str, list[int]] = {"train": [], **{name: [] for name in fractions}}
    for label, indices in _shuffled_by_class(labels, rng).items():
        if len(indices) < len(fractions) + 1:
            held_out = "".join(f" / {name}" for name in fractions)
            raise UserError(
                f"class '{label}' has {len(indices)} example(s), too few to split into train{held_out}; "
                f"give it at least {len(fractions) + 1} or pass separate --validation/--test files"
            )
        start = 0
        for k, (name, fraction) in enumerate(fractions.items()):
            # At least one example of the class in every held-out part, and at least one to train on.
            parts_after = len(fractions) - 1 - k
            take = min(max(1, round(len(indices) * fraction)), len(indices) - start - parts_after - 1)
            parts[name] += indices[start : start + take]
            start += take
        parts["train"] += indices[start:]
    return {name: sorted(part) for name, part in parts.items()}


def stratified_subset(labels: list[str], size: int, seed: int, key: str = "data.train_size") -> list[int]:
    """A seeded subset of `size` indices with the classes in their original proportions."""
    if size >= len(labels):
        return list(range(len(labels)))
    by_class = _shuffled_by_class(labels, random.Random(seed))
    if size < len(by_class):
        raise UserError(f"{key}={size} is smaller than the number of classes ({len(by_class)}); raise it")
    quota = {c: max(1, round(len(idx) * size / len(labels))) for c, idx in by_class.items()}
    while sum(quota.values()) > size:  # rounding went over: trim the class with the largest quota
        quota[max(quota, key=lambda c: quota[c])] -= 1
    while sum(quota.values()) < size:  # or under: top up the class with the most left over
        quota[max(quota, key=lambda c: len(by_class[c]) - quota[c])] += 1
    return sorted(i for c, idx in by_class.items() for i in idx[: quota[c]])


def _shuffled_by_class(labels: list[str], rng: random.Random) -> dict[str, list[int]]:
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    for label in sorted(by_class):  # a fixed order, so the seed alone decides the shuffle
        rng.shuffle(by_class[label])
    return dict(sorted(by_class.items()))


def sort_labels(labels: set[str]) -> list[str]:
    """Finite numbers in numeric order (1, 2, 10), anything else by code point: the same on every run."""
    try:
        values = {label: float(label) for label in labels}
    except ValueError:
        return sorted(labels)
    if not all(math.isfinite(v) for v in values.values()):
        return sorted(labels)
    return sorted(labels, key=lambda label: (values[label], label))
