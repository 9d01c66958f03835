"""What `predict` reads: texts (a table, or one --text) for a text model, image files for an image model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .examples import Examples


@dataclass
class Inputs:
    examples: Examples
    table: Path | None
    """The table the rows came from, which `predict --output` writes back with the predictions."""
    shown: list[str]
    """How each input is named on the terminal (the start of its text, or its file)."""
    skipped: list[str] = field(default_factory=list)
    key: str = "text"
    """What an input is called in `predict --json`: "text" or "path"."""

    @property
    def raw(self) -> list[str]:
        """Each input as given: its whole text, or its file's path."""
        return [str(x) for x in self.examples.inputs]


def text_inputs(path: str | None, text: str | None, column: str, pair: str | None = None, pair_column: str | None = None) -> Inputs:
    """One --text (and --pair), or the rows of a table (its text column, and pair column for a pair run)."""
    from .tables import read_texts

    if text is not None:
        if pair_column is not None and pair is None:
            raise UserError("this run's model reads text pairs; give the second text with --pair (a question-answering run: --context)")
        return Inputs(Examples([text], None, pairs=None if pair is None else [pair]), None, [repr(text[:70])])
    examples = read_texts(path, column, pair_column)
    return Inputs(examples, Path(path), [repr(t[:70]) for t in examples.inputs])


def image_inputs(path: str | None, text: str | None, column: str, pair: str | None = None, pair_column: str | None = None) -> Inputs:
    from .images import check_image, is_image_file, list_images

    if text is not None:
        raise UserError("this run's model reads images; give --input IMAGE or --input FOLDER instead of --text")
    path = Path(path)
    if path.is_dir():
        files, skipped = list_images(path)
        if not files:
            raise UserError(f"folder '{path}' holds no image files; give a folder of .png / .jpg images")
    elif is_image_file(path):
        check_image(path)
        files, skipped = [path], []
    elif path.exists():
        raise UserError(f"'{path}' is not an image file; give an image or a folder of images")
    else:
        raise UserError(f"input '{path}' does not exist; check the path")
    return Inputs(Examples(files, None), None, [str(f) for f in files], [str(p) for p in skipped], key="path")
