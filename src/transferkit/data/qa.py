"""Extractive question-answering data: SQuAD JSON (v1.1, and 2.0 with its unanswerable questions) and
flat tables (CSV, TSV, JSONL, a JSON array, Parquet) with a question, its context, the answer text and
the answer's character offset in the context.

Every answer is checked against its context (the context at answer_start reads the answer), so a file
whose offsets were computed on another version of the text stops with the question named instead of
training on spans that point elsewhere. Examples come out with the questions as inputs, the contexts as
their pairs and a `Gold` per question as its label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import assets
from ..errors import UserError
from .examples import Examples
from .tables import file_fingerprint, is_json_array, read_table


@dataclass(frozen=True)
class Gold:
    """A question's id and its gold answers, as (text, character offset in the context); none: unanswerable."""

    id: str
    answers: tuple[tuple[str, int], ...]


def read_qa(name: str, data) -> Examples:
    """The questions of a built-in set or a file; `data` (a DataConfig) names a flat table's columns:
    text_column the question, pair_column the context, label_column the answer, and `<label_column>_start`
    its offset."""
    path = assets.DATASETS[name].path() if name in assets.DATASETS else Path(name)
    squad = _squad_document(path)
    if squad is not None:
        return _from_squad(squad, path)
    return _from_table(path, data)


def _squad_document(path: Path) -> dict | None:
    """The parsed file where it is SQuAD JSON (one object with "data"), else None (a table)."""
    if not (path.is_file() and path.suffix.lower() == ".json") or is_json_array(path):
        return None
    file_fingerprint(path)  # not UTF-8, or binary: the one-line error naming the line
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError:
        return None  # JSON Lines in a .json file: the table reader reads (or refuses) it line by line
    return document if isinstance(document, dict) and "data" in document else None


def _from_squad(document: dict, path: Path) -> Examples:
    articles = document["data"]
    if not isinstance(articles, list):
        raise UserError(f"{path}: 'data' must be a list of articles, each with 'paragraphs' (the SQuAD format)")
    questions, contexts, golds = [], [], []
    for a, article in enumerate(articles, start=1):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise UserError(f"{path}: article {a} has no list of 'paragraphs' (the SQuAD format: data -> paragraphs -> qas)")
        for p, paragraph in enumerate(paragraphs, start=1):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas", []), list):
                raise UserError(f"{path}: paragraph {p} of article {a} is not an object with a list of 'qas'")
            context = paragraph.get("context")
            for q, item in enumerate(paragraph.get("qas", []), start=1):
                if not isinstance(item, dict):
                    raise UserError(f"{path}: question {q} of paragraph {p} of article {a} is not an object")
                qid = str(item.get("id") or f"article {a} paragraph {p} question {q}")
                question = _question_and_context(item.get("question"), context, f"{path}: question '{qid}'")
                answers = [] if item.get("is_impossible") else item.get("answers") or []
                if not isinstance(answers, list):
                    raise UserError(f"{path}: question '{qid}' has answers that are not a list of {{text, answer_start}}")
                golds.append(Gold(qid, tuple(_checked(a, context, f"{path}: question '{qid}'") for a in answers)))
                questions.append(question)
                contexts.append(context)
    if not questions:
        raise UserError(f"'{path}' holds no questions; give a SQuAD file with data -> paragraphs -> qas")
    return Examples(questions, golds, pairs=contexts)


def _question_and_context(question, context, where: str) -> str:
    if not isinstance(context, str) or not context.strip():
        raise UserError(f"{where} has no context; give every question the passage its answer is found in")
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where} has no question text; fill it in or remove the question")
    return question


def _checked(answer, context: str, where: str) -> tuple[str, int]:
    """(text, start) of one SQuAD answer, once the context at `start` reads `text`."""
    text = answer.get("text") if isinstance(answer, dict) else None
    start = answer.get("answer_start") if isinstance(answer, dict) else None
    if not isinstance(text, str) or not text:
        raise UserError(f"{where} has an answer without text; give each answer its text and answer_start")
    return text, _offset(start, text, context, where)


def _offset(start, text: str, context: str, where: str) -> int:
    if isinstance(start, str) and start.strip().isdigit():
        start = int(start)
    if not isinstance(start, int) or isinstance(start, bool):
        raise UserError(f"{where}: answer_start {start!r} of answer '{text[:60]}' is not a character offset (a whole number)")
    found = context[start : start + len(text)]
    if found != text:
        raise UserError(f"{where}: answer_start {start} does not point at its answer '{text[:60]}' (the context there reads "
                        f"'{found[:60]}'); set answer_start to the answer's character offset in the context")  # fmt: skip
    return start


def _from_table(path: Path, data) -> Examples:
    table = read_table(path)
    if not len(table.rows):
        raise UserError(f"data file '{path}' holds no questions; give a file with a header and at least one row")
    start_column = f"{data.label_column}_start"
    columns = {"question": (data.text_column, "--text-column"), "context": (data.pair_column or "context", "--pair-column"),
               "answer": (data.label_column, "--label-column"), "start": (start_column, "--label-column (NAME and NAME_start)")}  # fmt: skip
    values = {key: table.column(column, flag) for key, (column, flag) in columns.items()}
    ids = table.rows["id"] if "id" in table.columns else None
    questions, contexts, golds = [], [], []
    for i in range(len(table.rows)):
        qid = str(ids[i]) if ids is not None and ids[i] not in (None, "") else table.where(i)
        where = f"{table.where(i)}: question '{ids[i]}'" if ids is not None and ids[i] not in (None, "") else table.where(i)
        context = values["context"][i]
        question = _question_and_context(values["question"][i], context, where)
        texts, starts = _as_list(values["answer"][i]), _as_list(values["start"][i])
        if len(texts) != len(starts):
            raise UserError(f"{where} has {len(texts)} answer(s) but {len(starts)} {start_column} value(s); give one offset per answer")
        for text in texts:
            if not isinstance(text, str):
                raise UserError(f"{where}: answer {text!r} is not text; give the answer as it stands in the context")
        golds.append(Gold(qid, tuple((text, _offset(start, text, context, where)) for text, start in zip(texts, starts))))
        questions.append(question)
        contexts.append(context)
    return Examples(questions, golds, pairs=contexts)


def _as_list(value) -> list:
    """An answer cell as a list: one value, a JSON list of them, or nothing (empty: unanswerable)."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list) else [value]


def contexts_of(examples: Examples) -> list[str]:
    """What questions are grouped by when splitting: the context (no passage is in two splits)."""
    return list(examples.pairs)
