"""Entity-level precision, recall and F1 of tag sequences, by seqeval's definition (its default mode,
the conlleval one), written out here rather than taken as a dependency.

An entity is a maximal run of tags that `get_entities` reads as one chunk (B- starts one, I- / E-
continue one of the same type, S- is one alone; an I- after O or after another type starts a new
one, as conlleval does). A predicted entity counts only where the gold entity has the same type,
start and end. Micro-averaged over all entities; per type beside it. `tests/test_tokens.py` checks
these figures against the seqeval package where it is installed.
"""

from __future__ import annotations

from collections import Counter


def get_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first index, last index) of every entity in one sentence's tags."""
    chunks, prev_tag, prev_type, begin = [], "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        kind, type_ = tag[0], tag[2:] if len(tag) > 1 else ""
        if _ends(prev_tag, kind, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _starts(prev_tag, kind, prev_type, type_):
            begin = i
        prev_tag, prev_type = kind, type_
    return chunks


def _ends(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    return (prev in ("E", "S") or (prev in ("B", "I") and tag in ("B", "S", "O"))
            or (prev != "O" and prev_type != type_))  # fmt: skip


def _starts(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    return (tag in ("B", "S") or (prev in ("E", "S", "O") and tag in ("E", "I"))
            or (tag != "O" and prev_type != type_))  # fmt: skip


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """Precision, recall, F1 (micro over entities), per-type P/R/F1/support, and token accuracy."""
    true, found = set(), set()
    for n, (g, p) in enumerate(zip(gold, predicted)):
        true |= {(n, *e) for e in get_entities(g)}
        found |= {(n, *e) for e in get_entities(p)}
    hits = true & found
    per_type = {}
    for type_ in sorted({e[1] for e in true | found}):
        t, f, h = (sum(e[1] == type_ for e in s) for s in (true, found, hits))
        per_type[type_] = {**_prf(h, f, t), "support": t}
    tokens = sum(len(g) for g in gold)
    correct = sum(a == b for g, p in zip(gold, predicted) for a, b in zip(g, p))
    return {**_prf(len(hits), len(found), len(true)), "token_accuracy": correct / max(tokens, 1), "entities": len(true),
            "per_type": per_type, "examples": len(gold)}  # fmt: skip


def _prf(hits: int, found: int, true: int) -> dict:
    precision = hits / found if found else 0.0
    recall = hits / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def most_frequent_type(tags: list[list[str]]) -> str:
    """The entity type with the most entities in `tags` (ties: the first by name)."""
    counts = Counter(e[0] for sentence in tags for e in get_entities(sentence))
    return min(counts, key=lambda t: (-counts[t], t))


def capitalised_rule(words: list[list[str]], type_: str) -> list[list[str]]:
    """The rule a tagger has to beat: every run of capitalised words is one entity of `type_` (BIO tags)."""
    tagged = []
    for sentence in words:
        tags, previous = [], False
        for word in sentence:
            capital = word[:1].isupper()
            tags.append(("I-" if previous else "B-") + type_ if capital else "O")
            previous = capital
        tagged.append(tags)
    return tagged
