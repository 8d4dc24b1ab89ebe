"""Text items from CSV or JSONL: a text column and, optionally, a label column and a source-split column.

Why both formats: CSV is what spreadsheets export, JSONL what scrapers and LLM tooling write.  Rows that cannot be
read (a JSONL line that is not a JSON object, a CSV row with the wrong number of fields, an empty text cell) are
reported with their line number and skipped; the rest are imported.  Undecodable bytes are replaced (U+FFFD)
rather than failing the file.  Label cells are normalised like folder names (``"Not Spam"`` -> ``not_spam``); an
empty label cell means "unlabelled".
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from llm_flywheel.core.task import Task, TaskError, load_task, normalise_label
from llm_flywheel.data.base import Record
from llm_flywheel.data.image_folder import dataset_name

DEFAULT_LABEL_COLUMN = "label"
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents are legitimate text items


class Row:
    """One parsed row: ``values`` or ``error`` (why it was unreadable), with a stable reference."""

    __slots__ = ("ref", "values", "error")

    def __init__(self, ref: str, values: dict[str, Any] | None, error: str | None = None) -> None:
        self.ref, self.values, self.error = ref, values, error


def read_rows(path: str | Path) -> tuple[list[str], list[Row]]:
    """(columns, rows) from a .csv/.tsv, .jsonl/.ndjson or .json (a list of objects) file.  A file without a
    single row is an error: importing it would register an empty dataset and exit 0."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist or is not a file")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        columns, rows = _read_json(p)
    elif suffix in (".csv", ".tsv", ".txt"):
        columns, rows = _read_csv(p, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise ValueError(f"{p}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl, .ndjson or .json")
    if not rows:
        raise ValueError(f"{p}: no rows to import ({'only a header: ' + ', '.join(columns) if columns else 'empty'}); "
                         f"check the path")
    return columns, rows


def _read_csv(p: Path, delimiter: str) -> tuple[list[str], list[Row]]:
    rows: list[Row] = []
    with open(p, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{p} is empty (no header row)") from None
        except csv.Error as e:
            raise ValueError(f"{p}: unreadable header ({e})") from None
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            raise ValueError(f"{p}: duplicate column names in header {header}")
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                rows.append(Row(f"{p.name}:{reader.line_num}", None, f"malformed CSV ({e})"))
                continue
            ref = f"{p.name}:{reader.line_num}"
            if not cells or all(not c.strip() for c in cells):
                continue  # blank line
            if len(cells) != len(header):
                rows.append(Row(ref, None, f"{len(cells)} fields, header has {len(header)}"))
                continue
            rows.append(Row(ref, dict(zip(header, cells))))
    return header, rows


def _read_json(p: Path) -> tuple[list[str], list[Row]]:
    rows: list[Row] = []
    columns: dict[str, None] = {}
    text = p.read_text(encoding="utf-8-sig", errors="replace")
    if p.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            objs = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e}); for one object per line use .jsonl") from None
        entries = [(f"{p.name}:{i}", o) for i, o in enumerate(objs)]
    else:
        entries = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append((f"{p.name}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append(Row(f"{p.name}:{lineno}", None, f"not JSON ({e.msg})"))
    for ref, obj in entries:
        if not isinstance(obj, dict):
            rows.append(Row(ref, None, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        columns.update(dict.fromkeys(obj))
        rows.append(Row(ref, obj))
    return list(columns), rows


def _cell_str(v: Any) -> str | None:
    if v is None:
        return None
    s = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s if s.strip() else None


def resolve_label_column(columns: list[str], label_column: str | None, path: Path) -> str | None:
    """The label column: the one asked for (must exist), else ``label`` when the file has one, else none."""
    if label_column:
        if label_column not in columns:
            raise ValueError(f"{path}: label column {label_column!r} not found; columns: {', '.join(columns)}")
        return label_column
    return DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in columns else None


def task_for(
    modality: str, labels_seen: set[str], task: str | Path | Task | None, name: str | None, path: Path,
    instructions: str,
) -> Task:
    """The given task (checked for modality) or one derived from the label values seen."""
    if task is not None:
        t = task if isinstance(task, Task) else load_task(task)
        if t.modality != modality:
            raise TaskError(f"task {t.name!r} has modality {t.modality!r}; this source needs {modality!r}")
    else:
        labels = sorted(labels_seen)
        if len(labels) < 2:
            raise TaskError(
                f"{path}: {'no label values' if not labels else 'only one label value ' + repr(labels[0])}; "
                "pass --task FILE.toml naming the labels (unlabelled rows are labelled by the teacher)"
            )
        t = Task(name=dataset_name(name or path.stem), modality=modality, labels=tuple(labels),
                 descriptions={lab: lab.replace("_", " ") for lab in labels}, instructions=instructions)
    return replace(t, name=dataset_name(name)) if name else t


def label_of(values: dict[str, Any], column: str | None) -> str | None:
    if column is None:
        return None
    s = _cell_str(values.get(column))
    return normalise_label(s) or None if s is not None else None


def text_source(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str | None = None,
    split_column: str | None = None,
    task: str | Path | Task | None = None,
    name: str | None = None,
) -> tuple[Task, Iterator[Record], int]:
    """Task, records and count for a CSV/JSONL text file."""
    p = Path(path)
    columns, rows = read_rows(p)
    if text_column not in columns:
        raise ValueError(f"{p}: text column {text_column!r} not found; columns: {', '.join(columns) or 'none'} "
                         "(use --text-column)")
    if split_column and split_column not in columns:
        raise ValueError(f"{p}: split column {split_column!r} not found; columns: {', '.join(columns)}")
    lab_col = resolve_label_column(columns, label_column, p)
    records: list[Record] = []
    for r in rows:
        if r.values is None:
            records.append(Record(r.ref, error=r.error))
            continue
        text = _cell_str(r.values.get(text_column))
        if text is None:
            records.append(Record(r.ref, error=f"empty or missing {text_column!r}"))
            continue
        split = _cell_str(r.values.get(split_column)) if split_column else None
        records.append(Record(r.ref, text=text, gold_label=label_of(r.values, lab_col),
                              source_split=split.strip().lower() if split else None))
    t = task_for("text", {r.gold_label for r in records if r.gold_label}, task, name, p,
                 "Classify this text.")
    return t, iter(records), len(records)
