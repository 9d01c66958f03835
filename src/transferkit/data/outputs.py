"""Write predictions beside the user's rows without changing a byte of them.

Written in the input's own format, each row comes back exactly as it was in the file (its quoting, line
ends, byte order mark, key order and spacing), with the new columns added at its end: for CSV / TSV each
record's own text plus the new fields, for JSON Lines each line's text with the new keys before its last
brace, for Parquet the same table with new columns. Asked for another format (by the output's suffix), the
rows are converted: every original column and value, then the new ones.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from .. import folders
from ..errors import UserError
from .tables import LINE, TABLE_SUFFIXES, _json_objects, csv_header, csv_records, is_json_array, read_table

OUTPUT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def check_output(output: Path, input: Path | None, overwrite: bool) -> None:
    """Refuse an output that would replace the input or any other file without --overwrite."""
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"output file '{output}' must end in .csv, .tsv, .jsonl, .json or .parquet")
    if input is not None and output.exists() and input.exists() and os.path.samefile(output, input):
        raise UserError(f"--output '{output}' is the input file itself; write the predictions to a new file")
    if input is not None and output.resolve() == input.resolve():
        raise UserError(f"--output '{output}' is the input file itself; write the predictions to a new file")
    if output.is_dir():
        raise UserError(f"--output '{output}' is a folder; name a file, e.g. {output / 'predictions.csv'}")
    if output.exists() and not overwrite:
        raise UserError(f"output file '{output}' already exists; choose another name or pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise UserError(f"folder '{output.parent}' of the output file does not exist; create it first")
    if not os.access(output.parent, os.W_OK):
        raise UserError(f"cannot write into folder '{output.parent}' (permission denied); choose another --output")


def write_predictions(output: Path, input: Path | None, new: dict[str, list]) -> None:
    """`new` columns (name -> one value per row) after the input's rows, or alone when there is no input."""
    n = len(next(iter(new.values())))
    if input is None:
        _write_converted(output, [{} for _ in range(n)], new)
        return
    table_columns = read_table(input).columns
    clash = [name for name in new if name in table_columns]
    if clash:
        raise UserError(f"input file '{input}' already has a column '{clash[0]}'; rename it, or predict from the original file")
    same = output.suffix.lower() == input.suffix.lower() and input.is_file()
    if same and input.suffix.lower() in (".csv", ".tsv"):
        return folders.write_text(output, _csv_with_columns(input, new, n))
    if same and input.suffix.lower() == ".jsonl" or (same and input.suffix.lower() == ".json" and not is_json_array(input)):
        return folders.write_text(output, _jsonl_with_keys(input, new, n))
    if same and input.suffix.lower() == ".parquet":
        return _parquet_with_columns(input, output, new)
    _write_converted(output, list(_rows_as_read(input)), new)


def _csv_with_columns(path: Path, new: dict[str, list], n: int) -> str:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    records = csv_records(path, delimiter)
    out, row = io.StringIO(), 0
    header_seen = False
    for _, fields, raw in records:
        if not fields:  # a blank line stays a blank line
            out.write(raw)
            continue
        body, end = _split_line_end(raw)
        values = list(new) if not header_seen else [_cell(column[row]) for column in new.values()]
        row += header_seen
        header_seen = True
        out.write(body + delimiter + _csv_fields(values, delimiter) + end)
    if row != n:
        raise AssertionError(f"{path}: {row} rows written for {n} predictions")
    return out.getvalue()


def _jsonl_with_keys(path: Path, new: dict[str, list], n: int) -> str:
    empty = {line: not obj for line, obj, _ in _json_objects(path)}  # which lines hold an object, and is it {}
    out, row = io.StringIO(), 0
    with open(path, encoding="utf-8", newline="") as f:  # the same lines _json_objects reads, BOM kept
        for number, raw in enumerate(f, start=1):
            if number not in empty:  # blank lines, as they were
                out.write(raw)
                continue
            body, end = _split_line_end(raw)
            stripped = body.rstrip()
            close = stripped.rfind("}")
            added = ", ".join(f"{json.dumps(name)}: {json.dumps(column[row], ensure_ascii=False)}" for name, column in new.items())
            joiner = "" if empty[number] else ", "
            out.write(stripped[:close] + joiner + added + stripped[close:] + body[len(stripped) :] + end)
            row += 1
    if row != n:
        raise AssertionError(f"{path}: {row} rows written for {n} predictions")
    return out.getvalue()


def _split_line_end(raw: str) -> tuple[str, str]:
    for end in ("\r\n", "\n", "\r"):
        if raw.endswith(end):
            return raw[: -len(end)], end
    return raw, ""


def _parquet_with_columns(input: Path, output: Path, new: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(input)
    for name, column in new.items():
        table = table.append_column(name, pa.array(column))
    folders.write_bytes(output, lambda path: pq.write_table(table, path))


def _rows_as_read(path: Path):
    """Every row as a dict of its original values (CSV cells as strings, JSON values as parsed)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        names = csv_header(path, delimiter)
        records = csv_records(path, delimiter)
        next(r for r in records if r[1])
        for _, fields, _ in records:
            if fields:
                yield dict(zip(names, fields))
    elif suffix in (".jsonl", ".json") and path.is_file():
        for _, row, _ in _json_objects(path):
            yield row
    else:
        rows = read_table(path).rows
        for row in rows:
            row.pop(LINE, None)
            yield row


def _write_converted(output: Path, rows: list[dict], new: dict[str, list]) -> None:
    names = list(dict.fromkeys(k for row in rows for k in row)) + list(new)
    full = [{**row, **{name: column[i] for name, column in new.items()}} for i, row in enumerate(rows)]
    suffix = output.suffix.lower()
    if suffix in (".csv", ".tsv"):
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t" if suffix == ".tsv" else ",", lineterminator="\n")
        writer.writerow(names)
        writer.writerows([[_cell(row.get(name)) for name in names] for row in full])
        folders.write_text(output, buffer.getvalue())
    elif suffix == ".jsonl":
        folders.write_text(output, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in full))
    elif suffix == ".json":
        folders.write_text(output, json.dumps(full, ensure_ascii=False, indent=1) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{name: row.get(name) for name in names} for row in full])
        folders.write_bytes(output, lambda path: pq.write_table(table, path))


def _cell(value) -> str:
    """A value as a CSV cell: text as it is, anything else as JSON (numbers, lists, objects); missing: empty."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _csv_fields(values: list[str], delimiter: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="").writerow(values)
    return buffer.getvalue()


assert set(OUTPUT_SUFFIXES) == set(TABLE_SUFFIXES)
