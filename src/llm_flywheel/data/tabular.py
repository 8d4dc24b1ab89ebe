"""Tabular items from CSV (or JSONL): numeric feature columns and, optionally, a label and a source-split column.

Missing-value policy (documented in ``flywheel data add --help``):

* a cell that is empty or one of ``NA, N/A, NaN, null, None, ?`` (any case) is *missing* and stored as NaN
  (JSON ``null``); students impute it (or, like gradient boosting, use it natively);
* features are ``--features a,b,c`` if given, else every column (other than the label and split columns) whose
  non-missing cells all parse as numbers; columns left out that way are named in the import notes;
* a row with a non-numeric or infinite value in a chosen feature column is reported (line and column) and skipped.

The feature names are returned so the registry can keep them with the dataset (the ``dataset_import`` report).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from llm_flywheel.core.task import Task
from llm_flywheel.data.base import Record
from llm_flywheel.data.text import _cell_str, label_of, read_rows, resolve_label_column, task_for

MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


class _Bad(ValueError):
    def __init__(self, msg: str, infinite: bool = False) -> None:
        super().__init__(msg)
        self.infinite = infinite


def parse_number(v: Any) -> float:
    """A cell as float; NaN when missing; raises ``_Bad`` when non-numeric or infinite."""
    if v is None or isinstance(v, bool):
        if isinstance(v, bool):
            return float(v)
        return math.nan
    if isinstance(v, (int, float)):
        f = float(v)
    else:
        s = str(v).strip()
        if s.lower() in MISSING:
            return math.nan
        try:
            f = float(s)
        except ValueError:
            raise _Bad(f"{s[:30]!r} is not a number") from None
    if math.isinf(f):
        raise _Bad("infinite value", infinite=True)
    return f


def feature_row(values: Any, columns: tuple[str, ...] | list[str] = ()) -> list[float | None]:
    """One row as a model and the teacher read it, by the import's policy: NaN (or ``None``) is a missing value
    (``None``, so ``NaN`` and ``null`` are one input with one cache key); an infinite or non-numeric value is a
    ``ValueError`` naming its column -- the import skips such a row, so a model never saw one and its answer would
    be a guess."""
    out: list[float | None] = []
    for j, v in enumerate(values):
        try:
            f = parse_number(v)
        except _Bad as e:
            name = f"{columns[j]!r}" if j < len(columns) else f"#{j + 1}"
            raise ValueError(f"feature {name}: {e}; give a finite number (a missing value is null, or NaN)") from None
        out.append(None if math.isnan(f) else f)
    return out


def _numeric_column(rows: list[dict[str, Any]], col: str) -> bool:
    """Every non-missing cell is a number (an infinite one counts: that row is skipped later, not the column)."""
    seen = False
    for r in rows:
        try:
            f = parse_number(r.get(col))
        except _Bad as e:
            if not e.infinite:
                return False
            f = math.inf
        seen = seen or not math.isnan(f)
    return seen


def tabular_source(
    path: str | Path,
    *,
    features: list[str] | None = None,
    label_column: str | None = None,
    split_column: str | None = None,
    task: str | Path | Task | None = None,
    name: str | None = None,
) -> tuple[Task, Iterator[Record], int, list[str], list[str]]:
    """(task, records, count, feature names, notes) for a CSV/JSONL table."""
    p = Path(path)
    columns, rows = read_rows(p)
    lab_col = resolve_label_column(columns, label_column, p)
    if split_column and split_column not in columns:
        raise ValueError(f"{p}: split column {split_column!r} not found; columns: {', '.join(columns)}")
    good = [r.values for r in rows if r.values is not None]
    notes: list[str] = []
    if features:
        missing = [c for c in features if c not in columns]
        if missing:
            raise ValueError(f"{p}: feature column(s) {missing} not found; columns: {', '.join(columns)}")
        if lab_col in features:
            raise ValueError(f"{p}: the label column {lab_col!r} cannot also be a feature")
        feats = list(features)
    else:
        candidates = [c for c in columns if c not in (lab_col, split_column)]
        feats = [c for c in candidates if _numeric_column(good, c)]
        dropped = [c for c in candidates if c not in feats]
        if dropped:
            notes.append(f"non-numeric or empty column(s) not used as features: {', '.join(dropped)}")
        if not feats:
            raise ValueError(f"{p}: no numeric feature columns found among {candidates}; pass --features a,b,c")
    if lab_col:
        notes.append(f"label column: {lab_col!r}")
    records: list[Record] = []
    for r in rows:
        if r.values is None:
            records.append(Record(r.ref, error=r.error))
            continue
        vec: list[float] = []
        try:
            for c in feats:
                try:
                    vec.append(parse_number(r.values.get(c)))
                except _Bad as e:
                    raise _Bad(f"column {c!r}: {e}") from None
        except _Bad as e:
            records.append(Record(r.ref, error=str(e)))
            continue
        split = _cell_str(r.values.get(split_column)) if split_column else None
        records.append(Record(r.ref, features=vec, gold_label=label_of(r.values, lab_col),
                              source_split=split.strip().lower() if split else None))
    t = task_for("tabular", {r.gold_label for r in records if r.gold_label}, task, name, p,
                 "Classify this record from its feature values.")
    return replace(t, features=tuple(feats)), iter(records), len(records), feats, notes
