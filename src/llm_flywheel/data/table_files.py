"""Rows of a data file as people export them: CSV/TSV (any common delimiter and encoding), JSONL/JSON, Parquet, Excel.

Why this much care: a newcomer's own file is rarely the tidy UTF-8 comma CSV a demo ships.  Excel in much of Europe
writes ``;``-separated CSV with decimal commas (``3,5``), Excel on Windows writes Windows-1252 or, for "Unicode
text", UTF-16 with tabs; Hugging Face datasets and data warehouses hand out Parquet; business teams hand out .xlsx.
Each is read as it was meant, and *how* it was read (encoding, delimiter, decimal comma, sheet) becomes a note the
import prints, so a guess is never silent.  Rows that cannot be read are kept as :class:`Row` errors with their
line number; the import reports and skips them.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_flywheel.data.hf_disk import is_hf_saved, read_hf_saved

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents are legitimate text items

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".xlsx")  # files that stand for their rows
DELIMITERS = (",", ";", "\t", "|")  # in order of preference when two read a file equally well
FILES_EXTRA = "pip install 'llm-flywheel[files]'"
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})  # cells that mean "no value" (data.tabular)
# label cells that mean "not labelled": R's write.csv writes NA, Excel #N/A, others null -- never a class "na"
# ("none" stays a label: it is one in many tasks)
MISSING_LABELS = frozenset({"na", "n/a", "#n/a", "nan", "null", "?"})
_SAMPLE_ROWS = 50
_DECIMAL_COMMA = re.compile(r"^[+-]?(\d{1,3}(\.\d{3})+|\d+)(,\d+)?$")  # 3,5  1.234,5  12 (not 1.5)


def missing_label(cell: str) -> bool:
    """A label cell that means "not labelled" (:data:`MISSING_LABELS`)."""
    return cell.strip().lower() in MISSING_LABELS


class Row:
    """One parsed row: ``values`` or ``error`` (why it was unreadable), with a stable reference; ``written``: the
    cells as the file has them, where reading changed one (a decimal comma), for writing the row back."""

    __slots__ = ("ref", "values", "error", "_written")

    def __init__(self, ref: str, values: dict[str, Any] | None, error: str | None = None) -> None:
        self.ref, self.values, self.error = ref, values, error
        self._written: dict[str, Any] | None = None

    @property
    def written(self) -> dict[str, Any] | None:
        return self._written if self._written is not None else self.values


@dataclass
class Table:
    """A file's column names, its rows, and how it was read (notes for the user, empty for a plain UTF-8 file)."""

    columns: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    # a CSV's delimiter, encoding and decimal_comma (bool): how to write answers back so Excel opens them like it
    dialect: dict[str, Any] = field(default_factory=dict)


def read_table(path: str | Path, sheet: str | None = None) -> Table:
    """The rows of a .csv/.tsv/.txt, .jsonl/.ndjson/.json (a list of objects), .parquet or .xlsx file (``sheet``:
    a workbook's sheet by name, else its first), or of a Hugging Face ``save_to_disk`` folder (``data.hf_disk``).
    A file without a single row is an error: importing it would register an empty dataset and exit 0."""
    p = Path(path)
    if is_hf_saved(p):
        try:
            columns, rows, note = read_hf_saved(p)
        except ImportError:
            raise ValueError(f"{p}: a Hugging Face dataset saved to disk is read with pyarrow: {FILES_EXTRA}") from None
        return _not_empty(Table(columns, [Row(ref, values) for ref, values in rows], [note]), p)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist or is not a file")
    suffix = p.suffix.lower()
    if sheet is not None and suffix != ".xlsx":
        raise ValueError(f"{p}: --sheet is for Excel workbooks (.xlsx); a {suffix or 'plain'} file has no sheets")
    if suffix in JSON_SUFFIXES:
        table = _read_json(p)
    elif suffix in CSV_SUFFIXES:
        table = _read_csv(p, "\t" if suffix == ".tsv" else None)
    elif suffix == ".parquet":
        table = _read_parquet(p)
    elif suffix == ".xlsx":
        table = _read_xlsx(p, sheet)
    elif suffix == ".xls":
        raise ValueError(f"{p}: the old Excel format (.xls) is not read; save it as .xlsx or CSV")
    else:
        raise ValueError(f"{p}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl, .json, .parquet or .xlsx")
    return _not_empty(table, p)


def _not_empty(table: Table, p: Path) -> Table:
    if not table.rows:
        cols = table.columns
        raise on_other_sheets(table, ValueError(
            f"{p}: no rows to import ({'only a header: ' + ', '.join(cols) if cols else 'empty'}); check the path"))
    return table


def on_other_sheets(table: Table, e: ValueError) -> ValueError:
    """``e`` (a column not found, say) with the note that other sheets were not read, where the table has one:
    the first sheet of a workbook may just be a cover sheet."""
    other = next((n for n in table.notes if n.endswith("--sheet NAME reads another")), None)
    return type(e)(f"{e} -- {other.split(': ', 1)[1]}") if other else e


def cell_list(v: Any) -> list[Any] | None:
    """A cell that holds a list (a JSON/Parquet list, or a CSV cell written as ``["a", "b"]``), else None."""
    if isinstance(v, str) and v.strip().startswith("[") and v.strip().endswith("]"):
        try:
            v = json.loads(v)
        except ValueError:
            return None
    return list(v) if isinstance(v, (list, tuple)) else None


def cell_str(v: Any) -> str | None:
    """A cell as text; ``None`` when it is missing (empty, null, or a float NaN as pandas writes a gap)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(v)
    return s if s.strip() else None


def decode(raw: bytes, name: str) -> tuple[str, list[str]]:
    """Text of a file's bytes and a note when it was not plain UTF-8 (:func:`decode_as`)."""
    return decode_as(raw, name)[:2]


def decode_as(raw: bytes, name: str) -> tuple[str, list[str], str]:
    """(text, notes, encoding) of a file's bytes.  A byte-order mark decides (UTF-8, UTF-16 as Excel's "Unicode
    text" writes); else UTF-8 when the bytes mostly are (a few bad bytes become U+FFFD and are counted); else
    Windows-1252, what Excel on Windows writes -- rather than replacing every accented letter.  ``encoding`` is the
    codec to write such a file back with (``utf-8-sig`` keeps the mark)."""
    enc = "utf-8"
    if raw.startswith(codecs.BOM_UTF8):
        raw, enc = raw[len(codecs.BOM_UTF8):], "utf-8-sig"
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace"), [f"{name}: read as UTF-16 (its byte-order mark)"], "utf-16"
    try:
        return raw.decode("utf-8"), [], enc
    except UnicodeDecodeError as e:
        first = e.start
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    multibyte = sum(1 for ch in text if ord(ch) > 127) - bad
    if multibyte > 10 * bad:
        return text, [f"{name}: {bad:,} byte(s) are not valid UTF-8 (the first at offset {first:,}); they were "
                      "replaced by U+FFFD"], enc
    return raw.decode("cp1252", errors="replace"), [
        f"{name}: not UTF-8 (byte 0x{raw[first]:02x} at offset {first:,}); read as Windows-1252, as Excel on "
        "Windows writes. If accented letters look wrong, save the file as UTF-8 CSV"], "cp1252"


def _sniff_delimiter(text: str) -> str:
    """The delimiter that splits the header into most-consistent rows: the one giving the header at least two
    columns and the most sample rows with that many fields; ties go to the comma.  ``csv.Sniffer`` guesses from
    character frequencies and is fooled by free text full of commas or semicolons; this asks which reading works."""
    sample = text[: 1 << 18]
    best, best_score = ",", (-1, 0)
    for d in DELIMITERS:
        records = list(_records(sample, d, _SAMPLE_ROWS + 1))
        if not records or len(records[0]) < 2:
            continue
        width = len(records[0])
        score = (sum(1 for r in records[1:] if len(r) == width), width)
        if score > best_score:
            best, best_score = d, score
    return best


def _records(text: str, delimiter: str, limit: int) -> list[list[str]]:
    out: list[list[str]] = []
    try:
        for cells in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
            if cells:
                out.append(cells)
            if len(out) >= limit:
                break
    except csv.Error:
        pass  # a sample cut inside a quoted field: judge on what was read
    return out


def _read_csv(p: Path, delimiter: str | None) -> Table:
    text, notes, encoding = decode_as(p.read_bytes(), p.name)
    if delimiter is None:
        delimiter = _sniff_delimiter(text)
        if delimiter != ",":
            notes.append(f"{p.name}: read as {_delimiter_name(delimiter)}-separated")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ValueError(f"{p} is empty (no header row)") from None
    except csv.Error as e:
        raise ValueError(f"{p}: unreadable header ({e})") from None
    _check_header(p, header)
    rows: list[Row] = []
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
    commas = _decimal_commas(p.name, header, rows) if delimiter != "," else []
    # a ";" file is what a spreadsheet writes where "," is the decimal mark -- unless its numbers say otherwise
    comma_mark = bool(commas) or (delimiter == ";" and not any(
        _DOT_DECIMAL.match(v) for r in rows[:_SAMPLE_ROWS] if r.values for v in r.values.values()))
    return Table(header, rows, notes + commas,
                 {"delimiter": delimiter, "encoding": encoding, "decimal_comma": comma_mark})


_DOT_DECIMAL = re.compile(r"^\s*-?\d+\.\d+\s*$")


def _delimiter_name(d: str) -> str:
    return {"\t": "tab", ";": "semicolon", "|": "pipe"}.get(d, repr(d))


def _check_header(p: Path, header: list[str]) -> None:
    if len(set(header)) != len(header):
        raise ValueError(f"{p}: duplicate column names in header {header}")


def _decimal_commas(name: str, header: list[str], rows: list[Row]) -> list[str]:
    """Columns written with decimal commas (``3,5``; ``1.234,5``), as European spreadsheets export ``;``-separated
    files, rewritten as numbers Python reads (``3.5``).  Only a column whose every filled cell has that shape, and at
    least one a comma: ``1.5`` beside ``2,5`` is left alone, as is any text."""
    converted = []
    for col in header:
        cells = [r.values[col].strip() for r in rows if r.values is not None]
        filled = [c for c in cells if c.lower() not in MISSING]
        if filled and any("," in c for c in filled) and all(_DECIMAL_COMMA.match(c) for c in filled):
            converted.append(col)
            for r in rows:
                if r.values is not None and r.values[col].strip().lower() not in MISSING:
                    if r._written is None:
                        r._written = dict(r.values)
                    r.values[col] = r.values[col].strip().replace(".", "").replace(",", ".")
    return [f"{name}: decimal commas read as numbers in column(s) {', '.join(converted)} (3,5 = 3.5)"] \
        if converted else []


def _read_json(p: Path) -> Table:
    text, notes = decode(p.read_bytes(), p.name)
    rows: list[Row] = []
    columns: dict[str, None] = {}
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
    return Table(list(columns), rows, notes)


def _read_parquet(p: Path) -> Table:
    """Rows of a Parquet file (pyarrow, an optional extra): values keep their types, a null is missing."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{p}: reading Parquet needs pyarrow: {FILES_EXTRA}") from None
    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise ValueError(f"{p}: not a readable Parquet file ({type(e).__name__}: {str(e)[:200]})") from None
    columns = [str(c) for c in table.column_names]
    _check_header(p, columns)
    rows = [Row(f"{p.name}:{i}", dict(zip(columns, rec.values())))
            for i, rec in enumerate(table.to_pylist())]
    return Table(columns, rows)


def _read_xlsx(p: Path, sheet_name: str | None = None) -> Table:
    """Rows of an Excel workbook's sheet (openpyxl, an optional extra; the first unless named): its first row is
    the header; values as Excel computed them (formulas' cached results)."""
    try:
        import openpyxl
    except ImportError:
        raise ValueError(f"{p}: reading Excel files needs openpyxl: {FILES_EXTRA} (or save the sheet as CSV)") \
            from None
    try:
        wb = openpyxl.load_workbook(p, read_only=True, data_only=True)
    except Exception as e:  # zipfile.BadZipFile, KeyError, InvalidFileException for a file that is not .xlsx
        raise ValueError(f"{p}: not a readable .xlsx workbook ({type(e).__name__}: {str(e)[:200]})") from None
    try:
        if sheet_name is not None and sheet_name not in wb.sheetnames:
            raise ValueError(f"{p}: no sheet {sheet_name!r}; its sheets: {', '.join(wb.sheetnames)}")
        sheet = wb[sheet_name] if sheet_name is not None else wb.worksheets[0]
        notes = [f"{p.name}: read its first sheet {sheet.title!r} (of {len(wb.sheetnames)}: "
                 f"{', '.join(wb.sheetnames)}); --sheet NAME reads another"] \
            if len(wb.sheetnames) > 1 and sheet_name is None else []
        it = sheet.iter_rows(values_only=True)
        first = next(it, None)
        if first is None:
            raise ValueError(f"{p} is empty (no header row in sheet {sheet.title!r})")
        width = max((i + 1 for i, h in enumerate(first) if cell_str(h) is not None), default=0)
        header = [cell_str(h) or f"column{i + 1}" for i, h in enumerate(first[:width])]
        _check_header(p, header)
        rows = []
        for n, cells in enumerate(it, 2):
            if all(cell_str(c) is None for c in cells):
                continue  # blank row
            rows.append(Row(f"{p.name}:{n}", dict(zip(header, list(cells[:width]) + [None] * (width - len(cells))))))
    finally:
        wb.close()
    return Table(header, rows, notes)
