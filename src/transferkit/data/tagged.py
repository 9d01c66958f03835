"""Token-classification data: a tag per word, as CoNLL-style files or JSON Lines.

- CoNLL: one token per line, its tag in the last column (any number of columns, split on tabs where the
  line has them, else on spaces), a blank line between sentences; `-DOCSTART-` lines are skipped.
  Every token line must have as many columns as the first one.
- JSON Lines (or a JSON array): `{"tokens": [...], "tags": [...]}` per sentence, as many tags as tokens.

Tags follow the BIO scheme (O, B-TYPE, I-TYPE) or BIOES (also E-TYPE, S-TYPE); a tag outside the
scheme stops the reading with its file:line named.
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import assets
from ..errors import UserError
from .examples import Examples
from .tables import file_fingerprint, read_table

TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")  # sentences as rows; anything else is read as CoNLL
SCHEMES = {"bio": re.compile(r"O|[BI]-.+"), "bioes": re.compile(r"O|[BIES]-.+")}
SCHEME_TAGS = {"bio": "O, B-TYPE, I-TYPE", "bioes": "O, B-TYPE, I-TYPE, E-TYPE, S-TYPE"}


def read_tagged(name: str, scheme: str = "auto") -> tuple[Examples, str]:
    """(Examples of word lists with their tag lists, the scheme) of a built-in set or a file."""
    path = assets.DATASETS[name].path() if name in assets.DATASETS else Path(name)
    if path.suffix.lower() in TABLE_SUFFIXES:
        sentences = _from_table(path)
    else:
        sentences = _from_conll(path)
    if not sentences:
        raise UserError(f"'{path}' holds no tagged sentences; give token and tag per line, a blank line between sentences")
    if scheme == "auto":
        scheme = "bioes" if any(tag[:2] in ("E-", "S-") for _, tags, _ in sentences for tag in tags) else "bio"
    for _, tags, where in sentences:
        for k, tag in enumerate(tags):
            if not SCHEMES[scheme].fullmatch(tag):
                raise UserError(f"{where(k)}: tag '{tag}' is outside the {scheme.upper()} scheme ({SCHEME_TAGS[scheme]}); "
                                "write each tag that way, or set task.scheme")  # fmt: skip
    return Examples([words for words, _, _ in sentences], [tags for _, tags, _ in sentences]), scheme


def _from_conll(path: Path) -> list[tuple[list[str], list[str], object]]:
    if path.is_dir():
        raise UserError(f"data path '{path}' is a folder; give a CoNLL file (token and tag per line) or a JSONL file")
    if not path.is_file():
        raise UserError(f"data file '{path}' does not exist; check the path")
    file_fingerprint(path)  # not UTF-8, or binary: the one-line error naming the line
    sentences, words, tags, lines, width = [], [], [], [], None

    def close() -> None:
        if words:
            numbers = list(lines)
            sentences.append((list(words), list(tags), lambda k: f"{path}:{numbers[k]}"))
        words.clear(), tags.clear(), lines.clear()

    with open(path, encoding="utf-8-sig", newline="") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.startswith("-DOCSTART-"):
                close()
                continue
            fields = [x.strip() for x in line.split("\t")] if "\t" in line else line.split()
            count = len([x for x in fields if x])
            if count < 2:
                raise UserError(f"{path}:{number} has {count} column; each token line needs the token and its tag (the last column)")
            width = width or len(fields)
            if len(fields) != width or count != width:
                raise UserError(f"{path}:{number} has {count} columns where the first token line has {width}; give every "
                                "token line the same columns (token ... tag), a blank line between sentences")  # fmt: skip
            words.append(fields[0])
            tags.append(fields[-1])
            lines.append(number)
    close()
    return sentences


def _from_table(path: Path) -> list[tuple[list[str], list[str], object]]:
    table = read_table(path)
    tokens, tags = table.column("tokens", "a 'tokens' list per row"), table.column("tags", "a 'tags' list per row")
    sentences = []
    for i, (words, labels) in enumerate(zip(tokens, tags)):
        where = table.where(i)
        for key, values in (("tokens", words), ("tags", labels)):
            if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
                raise UserError(f"{where}: '{key}' must be a list of non-empty strings (got {str(values)[:60]})")
        if len(words) != len(labels):
            raise UserError(f"{where} has {len(words)} tokens but {len(labels)} tags; give one tag per token")
        sentences.append((list(words), list(labels), lambda k, where=where: f"{where} (tag {k + 1})"))
    return sentences
