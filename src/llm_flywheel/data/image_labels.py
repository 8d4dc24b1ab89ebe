"""Labels for an image folder from a table: a flat folder of pictures and a file that says what each one is.

Why: that is how most labelled image sets arrive -- Kaggle's ``train.csv`` (``id,label`` beside a ``train/``
folder) and Hugging Face's ImageFolder layout (``metadata.csv`` or ``metadata.jsonl`` with a ``file_name`` column
in the folder itself).  Without this, such a folder imported as unlabelled and its gold labels were lost.

A row names its picture by relative path, file name, or name without extension (Kaggle ids, also as numbers:
``42`` finds ``0042.png``); the first that is unambiguous in the folder counts.  Every mismatch is counted in the
import notes: pictures without a row stay unlabelled, rows that name no picture here are listed, a table label that
contradicts a class folder wins and is counted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llm_flywheel.data.table_files import cell_list, cell_str, missing_label, read_table

METADATA_FILES = ("metadata.csv", "metadata.jsonl")  # Hugging Face's ImageFolder convention
FILE_COLUMNS = ("file_name", "filename", "file", "image", "image_name", "image_id", "img", "path", "id", "name")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target")


def find_metadata(root: Path) -> Path | None:
    """The folder's own labels table (Hugging Face's ``metadata.csv`` / ``metadata.jsonl``), if it has one."""
    return next((root / n for n in METADATA_FILES if (root / n).is_file()), None)


def _column(columns: list[str], asked: str | None, known: tuple[str, ...], what: str, path: Path,
            flag: str) -> str:
    if asked:
        if asked not in columns:
            raise ValueError(f"{path}: {what} column {asked!r} not found; columns: {', '.join(columns)}")
        return asked
    lower = {c.lower(): c for c in columns}
    found = next((lower[k] for k in known if k in lower), None)
    if found is None:
        raise ValueError(f"{path}: no {what} column ({', '.join(known)}); columns: {', '.join(columns)} "
                         f"-- name it with {flag}")
    return found


def _number(s: str) -> str | None:
    """``"0042"``, ``"42"`` and ``"42.0"`` (an id a spreadsheet or Parquet stored as a number) as ``"42"``."""
    m = re.fullmatch(r"0*(\d+)(?:\.0+)?", s)
    return m.group(1) if m else None


def _indexes(files: list[Path], root: Path) -> list[dict[str, Path]]:
    """Lookups by relative path, file name, stem and numeric stem; a name two pictures share is left out."""
    out: list[dict[str, Path]] = []
    for key in (lambda f: f.relative_to(root).as_posix(), lambda f: f.name, lambda f: f.stem,
                lambda f: _number(f.stem) or ""):
        idx: dict[str, Path | None] = {}
        for f in files:
            k = key(f).lower()
            idx[k] = None if k in idx else f
        out.append({k: f for k, f in idx.items() if f is not None and k})
    return out


def _match(cell: str, indexes: list[dict[str, Path]]) -> Path | None:
    s = cell.strip().replace("\\", "/").removeprefix("./").lower()
    name = s.rsplit("/", 1)[-1]
    for idx, key in zip(indexes, (s, name, name, _number(name) or "")):
        if key in idx:
            return idx[key]
    parts = s.split("/")  # a path from somewhere above the folder (train/ab.jpg for the train folder)
    return next((indexes[0][k] for i in range(1, len(parts)) if (k := "/".join(parts[i:])) in indexes[0]), None)


def table_labels(path: Path, files: list[Path], root: Path, *, label_column: str | None = None,
                 file_column: str | None = None, guess: bool = True) -> tuple[dict[Path, str], list[str]]:
    """({picture: its label as written}, notes) from the labels table at ``path``.  ``guess``: a table of two
    columns has its label in the one that is not the file's (a table given as labels, not a folder's own
    ``metadata.csv``, whose other column may be a caption)."""
    table = read_table(path)
    cols = table.columns
    fcol = _column(cols, file_column, FILE_COLUMNS, "file", path, "--file-column")
    others = [c for c in cols if c != fcol]
    known = tuple(c for c in LABEL_COLUMNS if c != fcol.lower())
    if guess and not label_column and len(others) == 1:
        label_column = others[0]  # id,has_cactus: the one other column is the label
    lcol = _column(cols, label_column, known, "label", path, "--label-column")
    indexes = _indexes(files, root)
    labels: dict[Path, str] = {}
    unmatched: list[str] = []
    conflicting = 0
    several = 0
    for r in table.rows:
        values: dict[str, Any] = r.values or {}
        listed = cell_list(values.get(lcol))
        if listed is not None and len(listed) != 1:
            several += len(listed) > 1  # one label per picture: a multi-label row is no label, never "a_b"
            continue
        name, lab = cell_str(values.get(fcol)), cell_str(listed[0] if listed else values.get(lcol))
        if name is None or lab is None or missing_label(lab):  # R's NA: no label, not a class
            continue
        f = _match(name, indexes)
        if f is None:
            unmatched.append(name)
        elif labels.setdefault(f, lab.strip()) != lab.strip():
            conflicting += 1
    notes = [f"labels from {path.name} ({fcol!r} -> {lcol!r}): {len(labels):,} of {len(files):,} image(s)"]
    if len(labels) < len(files):
        notes.append(f"{len(files) - len(labels):,} image(s) have no label row in {path.name}: imported unlabelled "
                     "(the teacher labels them), unless a class folder names them")
    if unmatched:
        shown = ", ".join(repr(u) for u in unmatched[:3]) + (", ..." if len(unmatched) > 3 else "")
        notes.append(f"WARNING: {len(unmatched):,} row(s) of {path.name} name no image in this folder ({shown})")
    if several:
        notes.append(f"WARNING: {several:,} row(s) of {path.name} give several labels: one label per picture is "
                     "learnt, so those pictures are unlabelled (the teacher labels them)")
    if conflicting:
        notes.append(f"WARNING: {conflicting:,} image(s) have two different labels in {path.name}: the first is used")
    return labels, notes
