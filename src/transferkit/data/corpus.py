"""Unlabelled text: a built-in corpus, a .txt file or a folder of them, cut into passages.

Passages are the unit that splits, replay and the forgetting measurement draw from: whole
paragraphs packed up to about PASSAGE_CHARS characters, so that no split cuts a sentence.
"""

from __future__ import annotations

import random
from pathlib import Path

from .. import assets
from ..errors import UserError

PASSAGE_CHARS = 1500


def corpus_files(name_or_path: str) -> list[Path]:
    """The text files of a built-in corpus, a .txt file, or a folder of .txt files (sorted)."""
    if name_or_path in assets.CORPORA:
        path = assets.CORPORA[name_or_path].path()
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            known = ", ".join(assets.CORPORA)
            raise UserError(f"corpus '{name_or_path}' is neither a built-in corpus ({known}) nor a text file or folder; check the name")
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"corpus folder '{path}' holds no .txt files; give a folder of plain-text files")
    return files


def read_passages(name_or_path: str) -> list[str]:
    """Every passage of the corpus, in file order."""
    passages = []
    for file in corpus_files(name_or_path):
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise UserError(f"cannot read corpus file '{file}' ({e.strerror}); check its permissions") from None
        passages += pack_paragraphs(text)
    if not passages:
        raise UserError(f"corpus '{name_or_path}' holds no text; give a file with some prose in it")
    return passages


def pack_paragraphs(text: str, size: int = PASSAGE_CHARS) -> list[str]:
    """Paragraphs (split on blank lines) packed into passages of at most about `size` characters."""
    passages, current = [], ""
    for paragraph in (p.strip() for p in text.replace("\r\n", "\n").split("\n\n")):
        if not paragraph:
            continue
        if current and len(current) + len(paragraph) > size:
            passages.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        passages.append(current)
    return passages


def general_parts(name_or_path: str) -> tuple[list[str], list[str]]:
    """(held-out, replay) passages of a general corpus: a fixed shuffle, cut in two halves.

    The seed is fixed (not train.seed) so that runs with different seeds measure forgetting on
    the same text, and text replayed in training is never the text forgetting is measured on.
    """
    passages = read_passages(name_or_path)
    random.Random(0).shuffle(passages)
    half = max(1, len(passages) // 2)
    return passages[:half], passages[half:] or passages[:half]
