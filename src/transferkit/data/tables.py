"""Read tables exactly as the file holds them: CSV, TSV, JSON Lines, JSON, Parquet, and folders written by
`datasets`' `save_to_disk`.

Rows land in a `datasets.Dataset`: Arrow, memory-mapped from the cache, so a large file is never held in
Python lists. CSV and TSV are parsed by Python's csv module (newline="", strict quoting) and JSON by the json
module; `datasets` stores the parsed rows under a key made of the file's content hash, so a second read of the
same bytes costs nothing and an edited file is never served stale. Why not `load_dataset("csv")`: pandas,
behind it, makes the first column the index when a row has one field too many (every column shifts) and
fills a short row with empty strings, both without a word, and its cache is keyed by the file's path and
modification time. Parquet and save_to_disk folders are typed formats and load through `datasets` itself.

Every value of a CSV / TSV cell is the exact string in the file: no NA or number inference, quoted newlines,
CR LF, form feeds and U+2028 kept as they are.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .examples import Examples, TextSource

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
LINE = "__transferkit_line__"  # the file line each row starts on, for error messages; never shown as data
csv.field_size_limit(2**31 - 1)  # the default (131,072 characters) refuses long documents

# Values that mean "no label" in data exports (pandas' NA strings, compared case-insensitively).
MISSING_MARKERS = {"", "nan", "-nan", "null", "none", "na", "n/a", "<na>", "#n/a", "nil"}
EMPTY_TEXT_SHARE = 0.1  # more empty texts than this share of the rows stops the run


@dataclass
class Table:
    """The rows of one data file as read, and how to name a row in a message."""

    rows: object  # datasets.Dataset; every CSV / TSV column is a string column
    path: Path
    fingerprint: str

    @property
    def columns(self) -> list[str]:
        return [c for c in self.rows.column_names if c != LINE]

    def where(self, i: int) -> str:
        """'file.csv:17' (the line row i starts on, 0-based i), or 'file.parquet row 18' where lines mean nothing."""
        line = self.rows[i][LINE] if LINE in self.rows.column_names else 0
        if line:
            return f"{self.path}:{line}"
        return f"{self.path} row {i + 1}"

    def column(self, name: str, flag: str, role: str = "data"):
        if name not in self.columns:
            found = ", ".join(self.columns) or "none"
            raise UserError(f"{role} file '{self.path}' has no column '{name}' (it has: {found}); name the right one with {flag}")
        return self.rows[name]


def read_table(path: str | Path) -> Table:
    """Every row of a CSV, TSV, JSONL, JSON (an array of objects), Parquet file or save_to_disk folder."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir() and _is_saved_dataset(path):
        return _read_saved(path)
    if path.is_dir():
        raise UserError(f"data path '{path}' is a folder, not a file; pass a CSV, TSV, JSONL, JSON or Parquet file")
    if not path.is_file():
        raise UserError(f"data file '{path}' does not exist; check the path")
    if suffix not in TABLE_SUFFIXES:
        raise UserError(f"data file '{path}' has an unknown type '{suffix}'; use .csv, .tsv, .jsonl, .json or .parquet")
    fingerprint = file_fingerprint(path, check_utf8=suffix != ".parquet")
    if suffix == ".parquet":
        return _read_parquet(path, fingerprint)
    if suffix in (".csv", ".tsv"):
        header = csv_header(path, "\t" if suffix == ".tsv" else ",")
        features = {name: "string" for name in header}
        return Table(_store(_csv_rows, features, path, fingerprint), path, fingerprint)
    features = _json_features(path)
    return Table(_store(_json_rows, features, path, fingerprint), path, fingerprint)


def file_fingerprint(path: Path, check_utf8: bool = True) -> str:
    """sha256 of the bytes; a file that is not valid UTF-8 is refused, naming the line and the byte."""
    digest, decoder = hashlib.sha256(), codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                if check_utf8 and b"\0" in chunk:
                    raise UserError(_nul_byte(path))
                if check_utf8:
                    decoder.decode(chunk)
            if check_utf8:
                decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise UserError(_not_utf8(path)) from None
    except OSError as e:
        raise UserError(f"cannot read data file '{path}' ({e.strerror}); check its permissions") from None
    return digest.hexdigest()


def _nul_byte(path: Path) -> str:
    with open(path, "rb") as f:
        number = next(n for n, line in enumerate(f, start=1) if b"\0" in line)
    return (f"data file '{path}' holds a NUL byte (line {number}), which text never does: is it UTF-16 or binary? "
            "save it as UTF-8 text")  # fmt: skip


def _not_utf8(path: Path) -> str:
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                byte = line[e.start]
                return (f"data file '{path}' is not UTF-8 text: line {number} has the byte 0x{byte:02x} at offset "
                        f"{offset + e.start}; convert the file first, e.g. iconv -f latin1 -t utf-8 '{path}' > converted{path.suffix}")  # fmt: skip
            offset += len(line)
    return f"data file '{path}' ends inside a UTF-8 character; the file is cut short or not UTF-8"


def csv_header(path: Path, delimiter: str) -> list[str]:
    """The column names of a CSV / TSV file, checked: present, each named once."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next((record for record in reader if record), None)
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num}: {e}; fix the header") from None
    if header is None:
        raise UserError(f"data file '{path}' is empty; give a file with a header line and at least one row")
    seen = set()
    for name in header:
        if name in seen:
            raise UserError(f"data file '{path}' names the column '{name}' twice in its header; rename one of them")
        seen.add(name)
    return header


def csv_records(path: Path, delimiter: str) -> Iterator[tuple[int, list[str], str]]:
    """(first line, fields, raw text) of every record after the header, exactly as in the file.

    The raw text is the record's own characters, line end included: `predict` writes it back unchanged.
    Blank lines come through with no fields.
    """

    class Lines:  # the physical lines the reader takes, so that each record's raw text is known
        def __init__(self, f):
            self.f, self.taken = f, []

        def __iter__(self):
            return self

        def __next__(self):
            line = next(self.f)
            self.taken.append(line)
            return line

    with open(path, encoding="utf-8", newline="") as f:
        lines = Lines(f)
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        start = 1
        while True:
            lines.taken = []
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise UserError(f"{path}:{start}: {e}; check the quoting") from None
            yield start, record, "".join(lines.taken)
            start = reader.line_num + 1


def _csv_rows(path: str, fingerprint: str, features: dict) -> Iterator[dict]:
    """The rows of a CSV / TSV file as string dicts (a datasets generator; its arguments key the cache)."""
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    records = csv_records(path, delimiter)
    names = list(features)
    next(r for r in records if r[1])  # the header, checked by csv_header
    for line, record, _ in records:
        if not record:
            continue
        if len(record) != len(names):
            raise UserError(
                f"{path}:{line} has {len(record)} fields but the header names {len(names)}; "
                "quote fields that hold the delimiter, and give every row every column"
            )
        yield dict(zip(names, record)) | {LINE: line}


def _json_objects(path: Path) -> Iterator[tuple[int, dict, str]]:
    """(line, object, raw line) of a JSON Lines file, or (element number, object, "") of a JSON array."""

    def unique(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) < len(keys):
            raise ValueError(f"the key '{next(k for k in keys if keys.count(k) > 1)}' appears twice in one object")
        return dict(pairs)

    if is_json_array(path):
        try:
            items = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=unique)
        except ValueError as e:
            raise UserError(f"{path} is not valid JSON ({e}); fix the file") from None
        for number, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                raise UserError(f"{path}: element {number} of the array is not an object; each must be one object with named fields")
            yield number, item, ""
        return
    with open(path, encoding="utf-8-sig", newline="") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw, object_pairs_hook=unique)
            except ValueError as e:
                message = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
                raise UserError(f"{path}:{number} is not valid JSON ({message}); each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number} is not a JSON object; each line must be one object with named fields")
            yield number, row, raw


def is_json_array(path: Path) -> bool:
    """A .json file whose text starts with '[' (an array of objects), not JSON Lines."""
    if path.suffix.lower() != ".json":
        return False
    with open(path, encoding="utf-8-sig") as f:
        while char := f.read(1):
            if not char.isspace():
                return char == "["
    return False


def _json_features(path: Path) -> dict[str, str]:
    """Column -> "string" where every value present is text, else "json" (numbers, lists, objects)."""
    kinds: dict[str, str] = {}
    for _, row, _ in _json_objects(path):
        for key, value in row.items():
            if not isinstance(key, str):
                continue
            kind = "string" if value is None or isinstance(value, str) else "json"
            kinds[key] = "json" if kinds.get(key) == "json" else kind
    return kinds


def _json_rows(path: str, fingerprint: str, features: dict) -> Iterator[dict]:
    array = is_json_array(Path(path))  # elements of an array have no line of their own: rows are named by number
    for line, row, _ in _json_objects(Path(path)):
        yield {name: row.get(name) for name in features} | {LINE: 0 if array else line}


def _store(generator, kinds: dict[str, str], path: Path, fingerprint: str):
    """The generator's rows as a memory-mapped Dataset, cached under the file's content hash."""
    import datasets

    quiet_datasets()
    features = datasets.Features(
        {name: datasets.Value("string") if kind == "string" else datasets.Json() for name, kind in kinds.items()}
        | {LINE: datasets.Value("int64")}
    )
    try:
        return datasets.Dataset.from_generator(
            generator,
            features=features,
            gen_kwargs={"path": str(path), "fingerprint": fingerprint, "features": kinds},
            cache_dir=str(data_cache_dir()),
        )
    except datasets.exceptions.DatasetGenerationError as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise
    except ValueError as e:  # a header and no rows: datasets will not store an empty generator
        if "no data" not in str(e):
            raise
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)


def _read_parquet(path: Path, fingerprint: str) -> Table:
    import datasets

    quiet_datasets()
    try:
        rows = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(data_cache_dir() / fingerprint))
    except Exception as e:  # a damaged file raises many types: all mean the same to the user
        raise UserError(f"cannot read Parquet file '{path}' ({_first_line(e)}); check that it is a complete Parquet file") from None
    return Table(rows, path, fingerprint)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def _read_saved(path: Path) -> Table:
    """A folder from `Dataset.save_to_disk` (memory-mapped as it is); a DatasetDict's 'train' split."""
    import datasets

    quiet_datasets()
    try:
        rows = datasets.load_from_disk(str(path))
    except Exception as e:
        raise UserError(f"cannot read the saved dataset '{path}' ({_first_line(e)}); save it again with save_to_disk") from None
    if isinstance(rows, datasets.DatasetDict):
        if "train" not in rows:
            raise UserError(f"saved dataset '{path}' has no 'train' split (it has: {', '.join(rows)}); save one named train")
        rows = rows["train"]
    return Table(rows, path, f"{rows._fingerprint}:{path.resolve()}")


def saved_splits(path: str | Path) -> dict[str, str]:
    """The 'validation' and 'test' splits of a saved DatasetDict, where it has them: each is a folder
    that `read_table` reads on its own."""
    path = Path(path)
    if not (path.is_dir() and (path / "dataset_dict.json").is_file()):
        return {}
    return {name: str(path / name) for name in ("validation", "test") if _is_saved_dataset(path / name)}


# --- from rows to examples -------------------------------------------------------------------------


def texts_of(table: Table, column: str, flag: str = "--text-column", role: str = "data") -> tuple:
    """The text column, checked: present, text, none missing, few empty. Returns (lazy column, source)."""
    table.column(column, flag, role)
    rows = table.rows
    kind = rows.features[column]
    if getattr(kind, "dtype", None) not in ("string", "large_string"):
        first = next(i for i, v in enumerate(rows[column]) if v is not None and not isinstance(v, str))
        raise UserError(f"{table.where(first)}: column '{column}' holds {type(rows[first][column]).__name__} values, not text; "
                        f"give the text as a string or name another column with {flag}")  # fmt: skip
    arrow = rows.data.column(column)
    import pyarrow.compute as pc

    missing = arrow.null_count
    if missing:
        first = pc.index(pc.is_null(arrow), True).as_py()
        raise UserError(f"{table.where(first)} has no text in column '{column}'; fill it in or remove the row")
    empty = pc.sum(pc.equal(pc.utf8_length(arrow), 0)).as_py() or 0
    if empty and empty > EMPTY_TEXT_SHARE * len(rows):
        first = pc.index(pc.equal(pc.utf8_length(arrow), 0), True).as_py()
        raise UserError(f"{empty} of {len(rows)} rows of '{table.path}' have an empty text in column '{column}' (the first: "
                        f"{table.where(first)}); fill them in, remove them, or check --text-column")  # fmt: skip
    if empty:
        warn(f"{empty} of {len(rows)} rows of '{table.path}' have an empty text in column '{column}'; they train as empty inputs")
    return rows[column], TextSource(rows, column, f"{table.fingerprint}:{column}")


def labels_of(table: Table, column: str, flag: str = "--label-column", role: str = "data") -> list[str]:
    """The label column as label strings, checked: none missing, none that differ only in how they are written."""
    values = table.column(column, flag, role)
    labels = []
    for i, value in enumerate(values):
        try:
            label = label_text(value)
        except UserError as e:
            raise UserError(f"{table.where(i)}: {e}") from None
        if label is None or label.strip().lower() in MISSING_MARKERS:
            shown = "" if label is None or not label.strip() else f" ('{label}' marks a missing value)"
            raise UserError(f"{table.where(i)} has no label in column '{column}'{shown}; fill it in or remove the row")
        labels.append(label)
    check_label_spelling(labels, str(table.path))
    return labels


def label_text(value) -> str | None:
    """A label value as text: strings as they are, JSON numbers and booleans as JSON writes them."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return None if math.isnan(value) else repr(value)
    raise UserError(f"a label must be a single value, not {type(value).__name__} ({str(value)[:40]}); give one label per row")


def check_label_spelling(labels: list[str], where: str) -> None:
    """Labels that differ only in number format, case or surrounding space are one label written two ways."""
    seen: dict[str, str] = {}
    for label in dict.fromkeys(labels):
        key = _label_key(label)
        if key in seen:
            raise UserError(
                f"labels '{seen[key]}' and '{label}' in '{where}' differ only in how they are written "
                "(number format, case or surrounding space); write each label one way"
            )
        seen[key] = label


def _label_key(label: str) -> str:
    text = label.strip().casefold()
    try:
        number = float(text)
    except ValueError:
        return text
    return repr(number) if math.isfinite(number) else text


def labelled_examples(path: str | Path, text_column: str, label_column: str) -> Examples:
    """Labelled texts from one table, with a clear error for every way a column can be wrong."""
    table = read_table(path)
    if not len(table.rows):
        raise UserError(f"data file '{path}' holds no examples; give a file with a header and at least one row")
    texts, source = texts_of(table, text_column)
    return Examples(texts, labels_of(table, label_column), source=source)


def table_rows(table: Table) -> Iterator[tuple[str, dict]]:
    """(where, row) of every row, its values as read (for the small generation datasets)."""
    for i, row in enumerate(table.rows):
        row.pop(LINE, None)
        yield table.where(i), row


def read_texts(path: str | Path, text_column: str, pair_column: str | None = None) -> Examples:
    """Unlabelled texts (for `predict`), one per row, with the second text of each pair for a pair model."""
    table = read_table(path)
    if not len(table.rows):
        raise UserError(f"input file '{path}' holds no rows; give at least one")
    texts, source = texts_of(table, text_column, role="input")
    pairs = None
    if pair_column is not None:
        pairs, _ = texts_of(table, pair_column, "--pair-column", role="input")
        source = TextSource(source.rows, source.column, f"{source.fingerprint}:{pair_column}", pair_column)
    return Examples(texts, None, source=source, pairs=pairs)


# --- small helpers ---------------------------------------------------------------------------------


def data_cache_dir() -> Path:
    from ..models.causal import cache_dir

    return cache_dir() / "datasets"


def quiet_datasets() -> None:
    """Library code never prints: no progress bars or cache notices from datasets."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def warn(message: str) -> None:
    """One warning line; the CLI prints it as 'warning: ...'."""
    warnings.warn(message, DataWarning, stacklevel=2)


class DataWarning(UserWarning):
    """Something about the data that training can go on with, said once."""


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
