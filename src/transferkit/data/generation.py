"""Examples for generation (instruction fine-tuning, continued pre-training).

Each example becomes either a chat, {"messages": [{"role": ..., "content": ...}, ...]} whose last
turn is the response to learn, or plain text, {"text": ...} in which every token is learned.
A JSONL file may hold prompt/response pairs, chat `messages`, or plain `text`. A built-in labelled
dataset becomes a question per text whose answer is its label (bbc-news: the article's topic).
"""

from __future__ import annotations

from pathlib import Path

from .. import assets
from ..errors import UserError
from .corpus import read_passages
from .builtin import read_builtin
from .examples import Examples
from .tables import read_table, table_rows

ROLES = ("system", "user", "assistant")
PROMPT_CHARS = 400  # a built-in labelled text is cut to its start when it becomes a prompt


def read_generation(name_or_path: str, text_column: str = "text") -> Examples:
    """Generation examples from a JSONL / CSV file, a built-in corpus, or .txt files (plain text)."""
    path = Path(name_or_path).expanduser()
    if name_or_path in assets.DATASETS and assets.DATASETS[name_or_path].modality == "text":
        return labelled_as_chats(read_builtin(name_or_path))
    if name_or_path in assets.CORPORA or path.suffix.lower() == ".txt" or path.is_dir():
        return Examples([{"text": passage} for passage in read_passages(name_or_path)], None)
    table = read_table(path)
    if not len(table.rows):
        raise UserError(f"data file '{path}' holds no examples; give at least one line")
    # A table has every column in every row: a key a JSON line lacks reads as None, the same as null.
    examples = [_example({k: v for k, v in row.items() if v is not None}, text_column, where) for where, row in table_rows(table)]
    return Examples(examples, None)


def labelled_as_chats(examples: Examples, max_chars: int = PROMPT_CHARS) -> Examples:
    """A labelled dataset as a generation task: given the text (its start), answer with its label."""
    names = ", ".join(sorted(set(examples.labels)))
    question = f"Which of these topics is the text about: {names}? Answer with the topic alone."
    chats = [
        {"messages": [{"role": "user", "content": f"{question}\n\n{text.strip()[:max_chars]}"}, {"role": "assistant", "content": label}]}
        for text, label in zip(examples.inputs, examples.labels)
    ]
    return Examples(chats, None)


def _example(row: dict, text_column: str, where: str) -> dict:
    if "messages" in row:
        return {"messages": _check_messages(row["messages"], where)}
    if "prompt" in row or "response" in row:
        prompt, response = row.get("prompt"), row.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str) or not response.strip():
            raise UserError(f"{where} needs both 'prompt' and a non-empty 'response' as text; fill in the missing one")
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}
    if isinstance(row.get(text_column), str) and row[text_column].strip():
        return {"text": row[text_column]}
    raise UserError(
        f"{where} has none of the fields a generation example needs (prompt + response, messages, or {text_column}); "
        "add them or remove the line"
    )


def _check_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise UserError(f"{where}: each message needs a role ({', '.join(ROLES)}) and a text content")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise UserError(f"{where}: the last message must be the assistant's (non-empty) response to learn")
    return [{"role": t["role"], "content": t["content"]} for t in messages]
