"""``flywheel predict ... --output FILE``: every answer written beside its input, in the file format people score.

Why: "score this file" is the job a newcomer brings -- 10,000 rows of new tickets in a CSV -- and wants them back
with a predicted label per row, not a terminal table.  A table's rows keep their own columns (as read) and gain the
answer's; a file input is named in ``input``, a text in ``text``.  An answer column whose name the input already
uses (a ``label`` column of gold labels, say) is written as ``flywheel_<name>``.  The file is written under a
temporary name and moved into place, so a killed run never leaves half a file where the full one is expected.

A CSV answer to a CSV is written the way that file was: its delimiter (``.csv`` output), encoding and decimal mark
(``0,93`` where the input's numbers had commas, or it was ``;``-separated: what Excel writes where the comma is the
decimal mark) -- so it opens in the same spreadsheet as its input did, columns and accents intact.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_flywheel.data.table_files import FILES_EXTRA

OUTPUT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet", ".xlsx")
ANSWER_COLUMNS = ("predicted_label", "answered_by", "confidence", "student_label", "student_confidence",
                  "teacher_label", "model_version", "error")


def check_output(path: Path) -> None:
    """Refuse, before anything is answered, an output the writer could not produce."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output {path}: write {', '.join(OUTPUT_SUFFIXES)} (by the file's suffix)")
    if not path.parent.is_dir():
        raise ValueError(f"--output {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise ValueError(f"--output {path} is a folder; give a file name")
    needs = {".parquet": "pyarrow", ".xlsx": "openpyxl"}.get(path.suffix.lower())
    if needs:
        try:
            __import__(needs)
        except ImportError:
            raise ValueError(f"--output {path}: writing {path.suffix} needs {needs}: {FILES_EXTRA}") from None


def answer_records(inputs: Sequence[Any], answers: Sequence[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, one record per input): the input's own columns first, then the answer's (see the module)."""
    records = [_own(f) for f in inputs]
    own: dict[str, None] = {}
    for rec in records:
        own.update(dict.fromkeys(rec))
    names = {c: (f"flywheel_{c}" if c in own else c) for c in ANSWER_COLUMNS}
    for f, a, rec in zip(inputs, answers, records):
        if isinstance(a, Exception):
            rec.update({names[c]: None for c in ANSWER_COLUMNS})
            row = getattr(f, "ref", None) if getattr(f, "values", None) is None else None
            rec[names["error"]] = f"{row}: {a}" if row else str(a)  # a row that could not be read: where it is
        else:
            rec.update({names["predicted_label"]: a.label, names["answered_by"]: a.source,
                        names["confidence"]: round(float(a.confidence), 6), names["student_label"]: a.student_label,
                        names["student_confidence"]: round(float(a.student_confidence), 6),
                        names["teacher_label"]: a.teacher_label, names["model_version"]: a.model_version,
                        names["error"]: None})
    return [*own, *names.values()], records


def _own(f: Any) -> dict[str, Any]:
    """An input's own columns: a table row's cells (none when the row could not be read), else its text or path."""
    if hasattr(f, "ref") and hasattr(f, "values"):
        return dict(f.values or {})
    return {"text": f} if isinstance(f, str) else {"input": str(f)}


def input_dialect(inputs: Sequence[Any]) -> dict[str, Any]:
    """The CSV dialect of the table the inputs came from, when they all came from tables read alike; else {}."""
    seen = {json.dumps(d, sort_keys=True) for f in inputs if (d := getattr(f, "dialect", None))}
    whole = all(getattr(f, "dialect", None) for f in inputs)
    return json.loads(seen.pop()) if len(seen) == 1 and whole else {}


def write_answers(path: Path, inputs: Sequence[Any], answers: Sequence[Any]) -> int:
    """Write one record per input to ``path`` (format by suffix); returns the number written."""
    columns, records = answer_records(inputs, answers)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            like = input_dialect(inputs)
            delimiter = "\t" if suffix == ".tsv" else like.get("delimiter", ",")
            _csv(Path(tmp), columns, records, delimiter, like.get("encoding", "utf-8"),
                 bool(like.get("decimal_comma")))
        else:
            _WRITERS[suffix](Path(tmp), columns, records)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(records)


def _cell(v: Any) -> Any:
    return json.dumps(v, default=str) if isinstance(v, (list, dict)) else v


def _csv(path: Path, columns: list[str], records: list[dict[str, Any]], delimiter: str = ",",
         encoding: str = "utf-8", decimal_comma: bool = False) -> None:
    def cell(v: Any) -> Any:
        if v is None:
            return ""
        return str(v).replace(".", ",") if decimal_comma and isinstance(v, float) else _cell(v)

    with open(path, "w", encoding=encoding, errors="replace", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(columns)
        for r in records:
            w.writerow([cell(r.get(c)) for c in columns])


def _jsonl(path: Path, columns: list[str], records: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({c: r.get(c) for c in columns}, ensure_ascii=False, default=str) + "\n")


def _parquet(path: Path, columns: list[str], records: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = {c: [r.get(c) for r in records] for c in columns}
    arrays = {}
    for c, vals in data.items():
        try:
            arrays[c] = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in a column read from JSON: kept as text
            arrays[c] = pa.array([None if v is None else str(_cell(v)) for v in vals])
    pq.write_table(pa.table(arrays), path)


def _xlsx(path: Path, columns: list[str], records: list[dict[str, Any]]) -> None:
    import openpyxl
    from openpyxl.cell import WriteOnlyCell

    wb = openpyxl.Workbook(write_only=True)
    sheet = wb.create_sheet("answers")

    def cell(v: Any) -> Any:
        v = _cell(v)
        if not (isinstance(v, str) and v.startswith("=")):
            return v
        c = WriteOnlyCell(sheet, value=v)
        c.data_type = "s"  # text that starts with "=" stays text: a ticket is never run as a formula
        return c

    sheet.append(columns)
    for r in records:
        sheet.append([cell(r.get(c)) for c in columns])
    wb.save(path)


_WRITERS = {".jsonl": _jsonl, ".parquet": _parquet, ".xlsx": _xlsx}
