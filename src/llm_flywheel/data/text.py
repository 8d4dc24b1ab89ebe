"""Text items from a data file (CSV, JSONL, Parquet, Excel: :mod:`llm_flywheel.data.table_files`): one or more
text columns and, optionally, a label column and a source-split column.

Without ``--text-column`` the text is the ``text`` column, else the file's longest free-text column (a note says
which, and names the others); several columns (``subject,body``) are joined as ``name: value`` lines, so the
teacher knows which part is which, and :func:`join_text` is the one rule for the import and ``flywheel predict``.

Rows that cannot be read (a JSONL line that is not a JSON object, a CSV row with the wrong number of fields, an
empty text cell) are reported with their line number and skipped; the rest are imported.  Label cells are
normalised like folder names (``"Not Spam"`` -> ``not_spam``); an empty label cell means "unlabelled".
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from llm_flywheel.core.task import Task, TaskError, load_task, normalise_label
from llm_flywheel.data.base import Record
from llm_flywheel.data.folders import split_cell
from llm_flywheel.data.image_folder import dataset_name
from llm_flywheel.data.table_files import cell_list, cell_str, missing_label, on_other_sheets, read_table

DEFAULT_LABEL_COLUMN = "label"
DEFAULT_TEXT_COLUMN = "text"


def resolve_label_column(columns: list[str], label_column: str | None, path: Path) -> str | None:
    """The label column: the one asked for (must exist), else ``label`` when the file has one, else none."""
    if label_column:
        if label_column not in columns:
            raise ValueError(f"{path}: label column {label_column!r} not found; columns: {', '.join(columns)}")
        return label_column
    return DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in columns else None


def _filled(rows: list[dict[str, Any]], col: str, n: int = 500) -> list[str]:
    return [s for s in (cell_str(r.get(col)) for r in rows[:n]) if s is not None]


def _is_number(s: str) -> bool:
    try:
        float(s.replace(",", "."))
    except ValueError:
        return False
    return True


def free_text_columns(columns: Sequence[str], rows: list[dict[str, Any]], exclude: Sequence[str]) -> list[str]:
    """Columns that read as free text (most cells filled, not numbers, a median of three words or more), the
    longest first.  Ids, dates, codes and short categories fall out on the word count."""
    scored = []
    for c in columns:
        cells = _filled(rows, c)
        if c in exclude or not cells or len(cells) < 0.5 * min(len(rows), 500):
            continue
        if sum(_is_number(s) for s in cells) > 0.2 * len(cells):
            continue
        if statistics.median(len(s.split()) for s in cells) >= 3:
            scored.append((statistics.median(len(s) for s in cells), c))
    return [c for _, c in sorted(scored, key=lambda t: -t[0])]


def label_hint(columns: Sequence[str], rows: list[dict[str, Any]], exclude: Sequence[str]) -> str:
    """``, or name the column that holds them: --label-column X (N values: a, b, ...)`` for the columns that look
    like a class (a few short words, each used many times), to end the "no label values" error with; empty when
    none does."""
    hints = []
    for c in columns:
        cells = _filled(rows, c)
        if c in exclude or len(cells) < 10 or sum(any(ch.isdigit() for ch in s) for s in cells) > len(cells) / 2:
            continue  # ids, dates, amounts: classes are words
        values = {normalise_label(s) for s in cells}
        if 2 <= len(values) <= min(50, len(cells) // 3) and statistics.median(len(s.split()) for s in cells) <= 3:
            shown = ", ".join(sorted(values)[:5]) + (", ..." if len(values) > 5 else "")
            hints.append(f"--label-column {c} ({len(values)} values: {shown})")
    return f", or name the column that holds them: {'; '.join(hints[:3])}" if hints else ""


def resolve_text_columns(columns: Sequence[str], rows: list[dict[str, Any]], text_column: str | Sequence[str] | None,
                         exclude: Sequence[str], path: Path) -> tuple[tuple[str, ...], list[str]]:
    """(the text columns, notes): those asked for (``"a,b"`` or a list; each must exist), else ``text``, else the
    longest free-text column with a note that names the others."""
    if text_column:
        cols = tuple(c.strip() for c in (text_column.split(",") if isinstance(text_column, str) else text_column))
        missing = [c for c in cols if c not in columns]
        if missing or not all(cols):
            raise ValueError(f"{path}: text column(s) {', '.join(map(repr, missing or cols))} not found; columns: "
                             f"{', '.join(columns) or 'none'} (use --text-column, several as a,b)")
        return cols, []
    if DEFAULT_TEXT_COLUMN in columns:
        return (DEFAULT_TEXT_COLUMN,), []
    found = free_text_columns(columns, rows, exclude)
    if not found:
        raise ValueError(f"{path}: no {DEFAULT_TEXT_COLUMN!r} column and no column that reads as free text; columns: "
                         f"{', '.join(columns) or 'none'} (use --text-column, several as a,b)")
    together = ",".join(c for c in columns if c in found)
    others = (f"; other text column(s): {', '.join(found[1:])} -- --text-column {together} joins them"
              if len(found) > 1 else "")
    return (found[0],), [f"no {DEFAULT_TEXT_COLUMN!r} column: the text is {found[0]!r}, the longest free-text "
                         f"column{others}"]


def join_text(values: dict[str, Any], columns: Sequence[str]) -> str | None:
    """An item's text from its row: the one column as it is, or several as ``name: value`` lines (empty cells
    left out); None when every one is empty.  The import and ``flywheel predict`` both build it here, so a new
    row finds the stored item (and its cached teacher answer) by the same hash."""
    if len(columns) == 1:
        return cell_str(values.get(columns[0]))
    parts = [f"{c}: {v.strip()}" for c in columns if (v := cell_str(values.get(c))) is not None]
    return "\n".join(parts) or None


def task_for(
    modality: str, labels_seen: Sequence[str], task: str | Path | Task | None, name: str | None, path: Path,
    instructions: str, hint: str = "", column: str | None = None,
) -> Task:
    """The given task (checked for modality) or one derived from the gold labels seen (one per labelled row);
    ``hint`` ends the error for a file without labels (:func:`label_hint`)."""
    if task is not None:
        t = task if isinstance(task, Task) else load_task(task)
        if t.modality != modality:
            raise TaskError(f"task {t.name!r} has modality {t.modality!r}; this source needs {modality!r}")
    else:
        labels = sorted(set(labels_seen))
        if len(labels) < 2:
            raise TaskError(
                f"{path}: {'no label values' if not labels else 'only one label value ' + repr(labels[0])}; "
                f"pass --task FILE.toml naming the labels (unlabelled rows are labelled by the teacher){hint}"
            )
        _check_recurring(labels_seen, path, column, hint)
        t = Task(name=dataset_name(name or path.stem), modality=modality, labels=tuple(labels),
                 descriptions={lab: lab.replace("_", " ") for lab in labels}, instructions=instructions)
    return replace(t, name=dataset_name(name)) if name else t


def _check_recurring(labels_seen: Sequence[str], path: Path, column: str | None, hint: str) -> None:
    """Refuse a label column whose values mostly occur once (a price, a score, an id): 300 "classes" of one row
    each teach a student nothing, and every one would be a label in the teacher's prompt."""
    counts = Counter(labels_seen)
    once = sum(1 for n in counts.values() if n == 1)
    if len(counts) <= 20 or once <= len(counts) / 2:
        return
    numeric = sum(1 for lab in counts if _is_number(lab.replace("_", "."))) > 0.9 * len(counts)
    what = (f"label column {column!r}" if column else "the labels") + (
        f" has {len(counts):,} distinct values in {len(labels_seen):,} labelled rows, {once:,} of them seen once")
    fix = ("these are numbers to predict (a regression target): bin them into a few ranges in the file (a column "
           "low / medium / high) and pass that column with --label-column" if numeric else
           "these look like ids or free text: name the column of classes with --label-column")
    raise TaskError(f"{path}: {what}; llm-flywheel learns classes that recur, so {fix}{hint}")


def label_of(values: dict[str, Any], column: str | None) -> str | None:
    """The normalised gold label of a row; a one-element list is its element, a list of several is no label
    (:func:`label_advice` counts those)."""
    if column is None:
        return None
    v = values.get(column)
    listed = cell_list(v)
    if listed is not None:
        if len(listed) != 1:
            return None
        v = listed[0]
    s = cell_str(v)
    return normalise_label(s) or None if s is not None and not missing_label(s) else None


def label_advice(columns: Sequence[str], rows: list[dict[str, Any]], column: str | None,
                 exclude: Sequence[str]) -> tuple[list[str], str]:
    """(notes, hint) about a file's labels, the hint to end a "no label values" error with: without a label
    ``column``, the columns that look like one (:func:`label_hint`); with one whose cells hold several labels (a
    multi-label export), a WARNING -- each item here has one label, so those rows get no gold label, never a
    made-up ``a_b`` class (what they became before)."""
    if column is None:
        return [], label_hint(columns, rows, exclude)
    missing = Counter(s.strip() for r in rows if (s := cell_str(r.get(column))) and missing_label(s))
    notes = [f"{sum(missing.values()):,} label cell(s) in {column!r} read as no label ("
             + ", ".join(f"{n:,} {v!r}" for v, n in missing.most_common()) + "): the teacher labels those rows"
             ] if missing else []
    multi = [lst for r in rows if (lst := cell_list(r.get(column))) is not None and len(lst) > 1]
    if not multi:
        return notes, ""
    why = (f"{len(multi):,} row(s) have several labels in {column!r} (e.g. {multi[0]!r}); llm-flywheel learns one "
           "label per item, so they count as unlabelled (the teacher labels them) -- keep the one label each "
           "should have if they have one")
    return [*notes, f"WARNING: {why}"], f" -- {why}"


def text_source(
    path: str | Path,
    *,
    text_column: str | Sequence[str] | None = None,
    label_column: str | None = None,
    split_column: str | None = None,
    task: str | Path | Task | None = None,
    name: str | None = None,
    sheet: str | None = None,
) -> tuple[Task, Iterator[Record], int, list[str], tuple[str, ...]]:
    """Task, records, count, notes (how the file was read) and the text columns for a text file."""
    p = Path(path)
    table = read_table(p, sheet)
    columns, rows = table.columns, table.rows
    good = [r.values for r in rows if r.values is not None]
    try:
        if split_column and split_column not in columns:
            raise ValueError(f"{p}: split column {split_column!r} not found; columns: {', '.join(columns)}")
        lab_col = resolve_label_column(columns, label_column, p)
        text_cols, notes = resolve_text_columns(columns, good, text_column,
                                                [c for c in (lab_col, split_column) if c], p)
    except ValueError as e:
        raise on_other_sheets(table, e) from None
    if lab_col in text_cols:
        raise ValueError(f"{p}: the label column {lab_col!r} cannot also be the text")
    what = text_cols[0] if len(text_cols) == 1 else "+".join(text_cols)
    records: list[Record] = []
    for r in rows:
        if r.values is None:
            records.append(Record(r.ref, error=r.error))
            continue
        text = join_text(r.values, text_cols)
        if text is None:
            records.append(Record(r.ref, error=f"empty or missing {what!r}"))
            continue
        split = cell_str(r.values.get(split_column)) if split_column else None
        records.append(Record(r.ref, text=text, gold_label=label_of(r.values, lab_col),
                              source_split=split_cell(split) if split else None))
    more, hint = label_advice(columns, good, lab_col, [*text_cols, *([split_column] if split_column else [])])
    notes += more
    try:
        t = task_for("text", [r.gold_label for r in records if r.gold_label], task, name, p,
                     "Classify this text.", hint, lab_col)
    except ValueError as e:  # TaskError too: no labels on a cover sheet
        raise on_other_sheets(table, e) from None
    return t, iter(records), len(records), [*table.notes, *notes], text_cols
