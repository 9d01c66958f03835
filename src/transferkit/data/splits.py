"""Seeded, stratified splits: every class keeps its share in train, validation and test."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .. import assets
from ..errors import UserError
from .builtin import read_builtin, read_builtin_test
from .examples import Examples
from .tables import TABLE_SUFFIXES, labelled_examples, labels_of, saved_splits, texts_of


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


def read_labelled(path: str, text_column: str, label_column: str) -> Examples:
    """Labelled examples from a table (CSV, TSV, JSONL, JSON, Parquet, a saved dataset) or an image folder
    (one sub-folder per class)."""
    if is_image_folder(path):
        from .images import read_image_folder

        return read_image_folder(path)
    return labelled_examples(path, text_column, label_column)


def is_image_folder(path: str) -> bool:
    from .tables import _is_saved_dataset

    return Path(path).is_dir() and Path(path).suffix.lower() not in TABLE_SUFFIXES and not _is_saved_dataset(Path(path))


def load_splits(cfg, seed: int) -> Splits:
    """Read the data that `cfg` (a DataConfig) names and split it into train / validation / test."""
    builtin_test = None
    if cfg.name in assets.DATASETS:
        pool, builtin_test = read_builtin(cfg.name), read_builtin_test(cfg.name)
        modality = assets.DATASETS[cfg.name].modality
    elif Path(cfg.name).suffix.lower() in TABLE_SUFFIXES or Path(cfg.name).exists():
        pool = read_labelled(cfg.name, cfg.text_column, cfg.label_column)
        modality = "image" if is_image_folder(cfg.name) else "text"
    else:
        known = ", ".join(assets.DATASETS)
        raise UserError(
            f"dataset '{cfg.name}' is neither a built-in name ({known}) nor a CSV / JSONL file or image folder; check the name"
        )

    read = lambda p: read_labelled(p, cfg.text_column, cfg.label_column)  # noqa: E731
    saved = saved_splits(cfg.name) if modality == "text" else {}  # a saved DatasetDict brings its own splits
    validation = read(cfg.validation) if cfg.validation else _saved_split(saved, "validation", cfg)
    test = read(cfg.test) if cfg.test else (_saved_split(saved, "test", cfg) or builtin_test)
    skipped = [path for examples in (pool, validation, test) if examples is not None for path in examples.skipped]
    fractions = {}
    if test is None:
        fractions["test"] = cfg.test_fraction
    if validation is None:
        fractions["validation"] = cfg.validation_fraction
    parts = stratified_split(pool.labels, fractions, seed)
    train = pool.subset(parts.pop("train"))
    validation = pool.subset(parts["validation"]) if validation is None else validation
    test = pool.subset(parts["test"]) if test is None else test

    if cfg.train_size is not None:
        train = train.subset(stratified_subset(train.labels, cfg.train_size, seed))
    # Held-out subsets with a fixed seed: runs with different train.seed compare on the same images.
    if cfg.validation_size is not None:
        validation = validation.subset(stratified_subset(validation.labels, cfg.validation_size, 0, "data.validation_size"))
    if cfg.test_size is not None:
        test = test.subset(stratified_subset(test.labels, cfg.test_size, 0, "data.test_size"))
    label_names = sort_labels(set(train.labels))
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


def _saved_split(saved: dict, name: str, cfg) -> Examples | None:
    if name not in saved:
        return None
    texts, source = texts_of(saved[name], cfg.text_column)
    return Examples(texts, labels_of(saved[name], cfg.label_column), source=source)


def load_generation_splits(cfg, seed: int) -> Splits:
    """Generation examples (no labels) split at random with `seed`, or the user's own files."""
    from .generation import read_generation

    read = lambda p: read_generation(p, cfg.text_column)  # noqa: E731
    pool = read(cfg.name)
    validation = read(cfg.validation) if cfg.validation else None
    test = read(cfg.test) if cfg.test else None
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    take = {name: (0 if held is not None else max(1, round(len(pool) * fraction)))
            for name, held, fraction in (("validation", validation, cfg.validation_fraction), ("test", test, cfg.test_fraction))}
    if len(pool) <= take["validation"] + take["test"]:
        raise UserError(f"'{cfg.name}' holds {len(pool)} example(s), too few to split off validation and test; give more or pass --validation/--test files")
    validation = pool.subset(sorted(order[: take["validation"]])) if validation is None else validation
    test = pool.subset(sorted(order[take["validation"] : take["validation"] + take["test"]])) if test is None else test
    train = pool.subset(sorted(order[take["validation"] + take["test"] :]))
    rng = random.Random(seed)
    sizes = (("train", cfg.train_size, rng), ("validation", cfg.validation_size, random.Random(0)), ("test", cfg.test_size, random.Random(0)))
    parts = {"train": train, "validation": validation, "test": test}
    for name, size, r in sizes:
        if size is not None and size < len(parts[name]):
            parts[name] = parts[name].subset(sorted(r.sample(range(len(parts[name])), size)))
    return Splits(parts["train"], parts["validation"], parts["test"], [], "text")


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
