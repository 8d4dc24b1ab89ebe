"""Text items from a data file (CSV, JSONL, Parquet, Excel: :mod:`llm_flywheel.data.table_files`): a text column
and, optionally, a label column and a source-split column.

Rows that cannot be read (a JSONL line that is not a JSON object, a CSV row with the wrong number of fields, an
empty text cell) are reported with their line number and skipped; the rest are imported.  Label cells are
normalised like folder names (``"Not Spam"`` -> ``not_spam``); an empty label cell means "unlabelled".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from llm_flywheel.core.task import Task, TaskError, load_task, normalise_label
from llm_flywheel.data.base import Record
from llm_flywheel.data.image_folder import dataset_name
from llm_flywheel.data.table_files import cell_str, read_table

DEFAULT_LABEL_COLUMN = "label"


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
    s = cell_str(values.get(column))
    return normalise_label(s) or None if s is not None else None


def text_source(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str | None = None,
    split_column: str | None = None,
    task: str | Path | Task | None = None,
    name: str | None = None,
) -> tuple[Task, Iterator[Record], int, list[str]]:
    """Task, records, count and notes (how the file was read) for a text file."""
    p = Path(path)
    table = read_table(p)
    columns, rows = table.columns, table.rows
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
        text = cell_str(r.values.get(text_column))
        if text is None:
            records.append(Record(r.ref, error=f"empty or missing {text_column!r}"))
            continue
        split = cell_str(r.values.get(split_column)) if split_column else None
        records.append(Record(r.ref, text=text, gold_label=label_of(r.values, lab_col),
                              source_split=split.strip().lower() if split else None))
    t = task_for("text", {r.gold_label for r in records if r.gold_label}, task, name, p,
                 "Classify this text.")
    return t, iter(records), len(records), table.notes
