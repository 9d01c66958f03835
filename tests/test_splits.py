"""Seeded, stratified splits and subsets."""

from __future__ import annotations

from collections import Counter

import pytest

from transferkit import UserError
from transferkit.data.splits import sort_labels, stratified_split, stratified_subset


def test_split_keeps_class_shares_and_is_seeded():
    labels = ["a"] * 100 + ["b"] * 50 + ["c"] * 10
    parts = stratified_split(labels, {"test": 0.2, "validation": 0.1}, seed=0)
    assert sorted(parts["train"] + parts["test"] + parts["validation"]) == list(range(160))
    counts = {name: Counter(labels[i] for i in part) for name, part in parts.items()}
    assert counts["test"] == {"a": 20, "b": 10, "c": 2}
    assert counts["validation"] == {"a": 10, "b": 5, "c": 1}
    assert parts == stratified_split(labels, {"test": 0.2, "validation": 0.1}, seed=0)
    assert parts != stratified_split(labels, {"test": 0.2, "validation": 0.1}, seed=1)


def test_every_class_reaches_every_part():
    labels = ["a"] * 50 + ["rare"] * 3
    parts = stratified_split(labels, {"test": 0.2, "validation": 0.1}, seed=0)
    for part in parts.values():
        assert "rare" in {labels[i] for i in part}


def test_class_too_small():
    with pytest.raises(UserError, match="class 'x' has 2"):
        stratified_split(["a"] * 10 + ["x"] * 2, {"test": 0.2, "validation": 0.1}, seed=0)


def test_subset_is_stratified_exact_and_seeded():
    labels = ["a"] * 600 + ["b"] * 300 + ["c"] * 100
    subset = stratified_subset(labels, 100, seed=0)
    assert len(subset) == 100 and Counter(labels[i] for i in subset) == {"a": 60, "b": 30, "c": 10}
    assert subset == stratified_subset(labels, 100, seed=0)
    assert len(stratified_subset(labels, 7, seed=0)) == 7
    with pytest.raises(UserError, match="smaller than the number of classes"):
        stratified_subset(labels, 2, seed=0)


def test_numeric_labels_sort_as_numbers():
    assert sort_labels({"10", "2", "1"}) == ["1", "2", "10"]
    assert sort_labels({"pos", "neg"}) == ["neg", "pos"]


def test_a_held_out_split_shrinks_with_the_training_subset(tmp_path):
    import csv
    import warnings

    from transferkit.config import load_config
    from transferkit.data.splits import load_splits

    path = tmp_path / "big.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([f"text number {i}", "ab"[i % 2]] for i in range(10_000))

    def splits(**data):
        cfg = load_config(None, {"data.name": str(path), **{f"data.{k}": v for k, v in data.items()}})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return load_splits(cfg.data, 0), [str(w.message) for w in caught]

    whole, said = splits()
    assert len(whole.validation) == 1_000 and not said  # 10% of the file, no subset asked
    small, said = splits(train_size=100)
    assert len(small.train) == 100 and len(small.validation) == 500  # the floor: 100 x 0.1 / 0.7 is 15
    assert set(small.validation.inputs) <= set(whole.validation.inputs) and len(small.test) == 2_000
    assert said and "500 of the 1,000 held-out" in said[0] and "data.validation_size" in said[0]
    large, _ = splits(train_size=5_600)
    assert len(large.validation) == 800  # what a file with 5,600 training examples holds out
    assert len(splits(train_size=100, validation_size=40)[0].validation) == 40  # the user's number wins
    assert len(splits(train_size=6_000)[0].validation) == 857  # 6,000 x 0.1 / 0.7, rounded
