"""Tabular items from a data file (CSV, JSONL, Parquet, Excel): numeric and categorical feature columns and,
optionally, a label and a source-split column.

Missing-value policy (documented in ``flywheel data add --help``):

* a cell that is empty or one of ``NA, N/A, NaN, null, None, ?`` (any case) is *missing* and stored as NaN
  (JSON ``null``); students impute it (or, like gradient boosting, use it natively);
* features are ``--features a,b,c`` if given, else every column (other than the label and split columns) whose
  non-missing cells all parse as numbers, plus every *categorical* column: text with at most
  :data:`CATEGORY_MAX` distinct values, no more than half as many as it has values (a plan, a country -- not an
  identifier or free text); columns left out are named in the import notes;
* a categorical value is kept as its text, as written (``02134`` stays ``02134``); a number given for one (a JSON
  client, a DataFrame) reads as its shortest text (``12.0`` -> ``"12"``).  The teacher reads it as written and the
  student encodes it (gradient boosting splits on categories natively);
* a row with a non-numeric or infinite value in a chosen numeric column is reported (line and column) and skipped.

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
from llm_flywheel.data.folders import split_cell
from llm_flywheel.data.table_files import MISSING, cell_str, on_other_sheets, read_table
from llm_flywheel.data.text import label_advice, label_of, resolve_label_column, task_for

CATEGORY_MAX = 50  # distinct values a text column may have to be used as a categorical feature by default


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


def category_value(v: Any) -> str | None:
    """A categorical cell as its category: the text, stripped; ``None`` when missing; a number as it reads
    (``12.0`` -> ``"12"``), so a client sending a code as a number finds the category the import stored."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    s = str(v).strip()
    return None if s.lower() in MISSING else s


class FeatureError(ValueError):
    """A value a model cannot read: ``what`` names its column and says what is wrong; the message adds the fix."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}; give a finite number (a missing value is null, or NaN)")
        self.what = what


def feature_row(values: Any, columns: tuple[str, ...] | list[str] = (),
                categorical: tuple[str, ...] | list[str] = ()) -> list[float | str | None]:
    """One row as a model and the teacher read it, by the import's policy: NaN (or ``None``) is a missing value
    (``None``, so ``NaN`` and ``null`` are one input with one cache key); a ``categorical`` column's value is its
    category (:func:`category_value`); an infinite or non-numeric value elsewhere is a :class:`FeatureError` naming
    its column -- the import skips such a row, so a model never saw one and its answer would be a guess."""
    cats = set(categorical)
    out: list[float | str | None] = []
    for j, v in enumerate(values):
        if j < len(columns) and columns[j] in cats:
            out.append(category_value(v))
            continue
        try:
            f = parse_number(v)
        except _Bad as e:
            name = repr(columns[j]) if j < len(columns) else f"#{j + 1}"
            raise FeatureError(f"feature {name}: {e}") from None
        out.append(None if math.isnan(f) else f)
    return out


def _present(rows: list[dict[str, Any]], col: str) -> list[Any]:
    """The column's cells that are not missing."""
    return [r.get(col) for r in rows if category_value(r.get(col)) is not None]


def _distinct(rows: list[dict[str, Any]], col: str) -> set[str]:
    return {category_value(v) for v in _present(rows, col)}


def _is_number(v: Any) -> bool:
    """A number, or an infinite one (that row is skipped later, not the column)."""
    try:
        parse_number(v)
    except _Bad as e:
        return e.infinite
    return True


def _numeric_column(rows: list[dict[str, Any]], col: str) -> bool:
    """Every non-missing cell is a number, and there is one."""
    present = _present(rows, col)
    return bool(present) and all(_is_number(v) for v in present)


def _text_column(rows: list[dict[str, Any]], col: str) -> bool:
    """Most of the column's values are text, not numbers: a category (``"premium"``), not a number column with a
    stray typo (whose rows are skipped, as before categories existed)."""
    present = _present(rows, col)
    return bool(present) and sum(1 for v in present if _is_number(v)) < len(present) / 2


def _categories(rows: list[dict[str, Any]], col: str) -> int | None:
    """The number of distinct values when ``col`` reads as a categorical feature (few distinct texts), else None."""
    if not _text_column(rows, col):
        return None
    distinct = len(_distinct(rows, col))
    return distinct if distinct <= min(CATEGORY_MAX, len(_present(rows, col)) // 2) else None  # each twice, on average


def _why_not(rows: list[dict[str, Any]], col: str) -> str:
    """Why a column is not a feature by default, for the import notes."""
    if not _present(rows, col):
        return "empty"
    if not _text_column(rows, col):
        return "numbers mixed with text"
    return f"text with {len(_distinct(rows, col)):,} distinct values: an identifier or free text?"


def tabular_source(
    path: str | Path,
    *,
    features: list[str] | None = None,
    categorical: list[str] | None = None,
    label_column: str | None = None,
    split_column: str | None = None,
    task: str | Path | Task | None = None,
    name: str | None = None,
    sheet: str | None = None,
) -> tuple[Task, Iterator[Record], int, list[str], list[str]]:
    """(task, records, count, feature names, notes) for a table file.  ``categorical``: which of the given
    ``features`` are categories, when known (rows joining a stored table are read as it was), else detected."""
    p = Path(path)
    table = read_table(p, sheet)
    columns, rows = table.columns, table.rows
    try:
        lab_col = resolve_label_column(columns, label_column, p)
        if split_column and split_column not in columns:
            raise ValueError(f"{p}: split column {split_column!r} not found; columns: {', '.join(columns)}")
    except ValueError as e:
        raise on_other_sheets(table, e) from None
    good = [r.values for r in rows if r.values is not None]
    notes: list[str] = list(table.notes)
    if features:
        missing = [c for c in features if c not in columns]
        if missing:
            raise on_other_sheets(table, ValueError(f"{p}: feature column(s) {missing} not found; columns: "
                                                    f"{', '.join(columns)}"))
        if lab_col in features:
            raise ValueError(f"{p}: the label column {lab_col!r} cannot also be a feature")
        feats = list(features)
        cats = ([c for c in feats if c in categorical] if categorical is not None
                else [c for c in feats if _text_column(good, c)])  # asked for by name: a text column is a category
    else:
        candidates = [c for c in columns if c not in (lab_col, split_column)]
        counts = {c: _categories(good, c) for c in candidates if not _numeric_column(good, c)}
        cats = [c for c, k in counts.items() if k is not None]
        feats = [c for c in candidates if c not in counts or c in cats]
        dropped = [c for c in candidates if c not in feats]
        if dropped:
            notes.append("column(s) not used as features (name them in --features to use them): "
                         + ", ".join(f"{c} ({_why_not(good, c)})" for c in dropped))
        if not feats:
            raise ValueError(f"{p}: no numeric or categorical feature columns found among {candidates}; pass "
                             "--features a,b,c")
    if cats:
        notes.append("categorical column(s): " + ", ".join(
            f"{c} ({len(_distinct(good, c))} values)" for c in cats))
    if lab_col:
        notes.append(f"label column: {lab_col!r}")
    records: list[Record] = []
    for r in rows:
        if r.values is None:
            records.append(Record(r.ref, error=r.error))
            continue
        try:
            vec = [nan_missing(v) for v in feature_row([r.values.get(c) for c in feats], feats, cats)]
        except FeatureError as e:
            records.append(Record(r.ref, error=e.what))
            continue
        split = cell_str(r.values.get(split_column)) if split_column else None
        records.append(Record(r.ref, features=vec, gold_label=label_of(r.values, lab_col),
                              source_split=split_cell(split) if split else None))
    more, hint = label_advice(columns, good, lab_col, [split_column] if split_column else [])
    notes += more
    t = task_for("tabular", [r.gold_label for r in records if r.gold_label], task, name, p,
                 "Classify this record from its feature values.", hint, lab_col)
    return replace(t, features=tuple(feats), categorical=tuple(cats)), iter(records), len(records), feats, notes


def nan_missing(v: float | str | None) -> float | str:
    """A record's value as the import keeps it: a missing one as NaN (``row_json`` writes it as null)."""
    return math.nan if v is None else v
