"""Data files as people export them: ``;``-separated CSV with decimal commas, Windows-1252 and UTF-16 text,
Parquet, Excel.  Each is imported as meant, and the import says how it read the file."""

from __future__ import annotations

import json

import pytest

from llm_flywheel.core.task import Task, TaskError
from llm_flywheel.data.registry import add_dataset
from llm_flywheel.data.table_files import read_table
from llm_flywheel.pipeline.predict_files import RowInput, expand_tables

TICKETS = [(f"{t} (Ticket {i})", lab) for i in range(8) for t, lab in (
    ("Drucker druckt nicht; Papierstau, schon wieder", "hardware"),
    ("Rechnung doppelt abgebucht; bitte erstatten, danke", "billing"),
    ("Passwort vergessen, Konto gesperrt; Zugang?", "account"))]


def _stored(ws, dataset, column="text"):
    with ws.store() as s:
        return {r["source_ref"]: (r[column], r["gold_label"])
                for r in s.query(f"SELECT source_ref, {column}, gold_label FROM items WHERE dataset=?", (dataset,))}


def _csv(rows, sep):
    return "\n".join(sep.join(c if sep not in c and '"' not in c else '"' + c.replace('"', '""') + '"' for c in r)
                     for r in rows) + "\n"


def test_a_semicolon_csv_with_commas_in_its_text_is_read_as_semicolon_separated(ws, tmp_path):
    """European Excel writes ';'; before, the whole header was one column: "text column 'text' not found"."""
    p = tmp_path / "tickets.csv"
    p.write_text(_csv([("text", "label"), *TICKETS], ";"), encoding="utf-8")
    rep = add_dataset(ws, "text", path=p, progress=False)
    assert rep.added == 24 and rep.skipped == 0
    assert "tickets.csv: read as semicolon-separated" in rep.notes
    stored = _stored(ws, "tickets")
    assert stored["tickets.csv:2"] == ("Drucker druckt nicht; Papierstau, schon wieder (Ticket 0)", "hardware")


def test_a_comma_csv_whose_text_is_full_of_semicolons_stays_comma_separated(ws, tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(_csv([("text", "label"), *TICKETS], ","), encoding="utf-8")
    rep = add_dataset(ws, "text", path=p, progress=False)
    assert rep.added == 24 and not any("separated" in n for n in rep.notes)
    assert _stored(ws, "c")["c.csv:3"][0] == "Rechnung doppelt abgebucht; bitte erstatten, danke (Ticket 0)"


def test_windows_1252_text_keeps_its_accents_and_says_how_it_was_read(ws, tmp_path):
    """Before: every accented letter became U+FFFD, silently."""
    p = tmp_path / "avis.csv"
    p.write_bytes("text,label\nTrès bon café,positif\nDéçu, très déçu,négatif\n".replace(
        "Déçu, très déçu", '"Déçu, très déçu"').encode("cp1252"))
    rep = add_dataset(ws, "text", path=p, progress=False)
    assert any(n.startswith("avis.csv: not UTF-8 (byte 0xe8 at offset 13); read as Windows-1252") for n in rep.notes), \
        rep.notes
    assert sorted(_stored(ws, "avis").values()) == [("Déçu, très déçu", "négatif"), ("Très bon café", "positif")]


def test_utf8_with_a_few_bad_bytes_stays_utf8_and_counts_them(ws, tmp_path):
    """A UTF-8 file with one corrupt byte is not re-read as Windows-1252 (which would garble every accent)."""
    p = tmp_path / "u.csv"
    p.write_bytes("text,label\nüber größe äöü ÄÖÜ,a\ngrüße aus köln,b\n".encode("utf-8") + b"naive\xff text,a\n")
    rep = add_dataset(ws, "text", path=p, progress=False)
    assert any("1 byte(s) are not valid UTF-8 (the first at offset" in n and "U+FFFD" in n for n in rep.notes), \
        rep.notes
    texts = {t for t, _ in _stored(ws, "u").values()}
    assert texts == {"über größe äöü ÄÖÜ", "grüße aus köln", "naive\ufffd text"}


def test_excel_unicode_text_utf16_with_tabs(ws, tmp_path):
    """Excel's "Unicode Text (*.txt)": UTF-16 with a byte-order mark, tab-separated."""
    p = tmp_path / "export.txt"
    p.write_bytes("text\tlabel\r\nπρόβλημα με τον εκτυπωτή\tυλικό\r\nλάθος τιμολόγιο\tχρέωση\r\n".encode("utf-16"))
    rep = add_dataset(ws, "text", path=p, progress=False)
    assert rep.added == 2
    assert "export.txt: read as UTF-16 (its byte-order mark)" in rep.notes
    assert "export.txt: read as tab-separated" in rep.notes
    assert ("λάθος τιμολόγιο", "χρέωση") in _stored(ws, "export").values()


def test_a_european_table_keeps_its_decimal_comma_columns_as_numbers(ws, tmp_path):
    """Before: ``48,91`` was text, the column 'an identifier or free text?', and the model lost its numbers."""
    rows = [("alter", "umsatz", "stadt", "code", "label")]
    for i in range(40):
        rows.append((f"{30 + i},{i % 10}", f"1.{200 + i},5" if i % 2 else f"{900 + i}", ["Köln", "Zürich"][i % 2],
                     ["1.5", "2,5"][i % 2], ["bleibt", "kündigt"][i % 2]))
    p = tmp_path / "kunden.csv"
    p.write_bytes(_csv(rows, ";").encode("cp1252"))
    rep = add_dataset(ws, "tabular", path=p, progress=False)
    assert rep.added == 40 and rep.skipped == 0
    assert "kunden.csv: decimal commas read as numbers in column(s) alter, umsatz (3,5 = 3.5)" in rep.notes
    with ws.store() as s:
        task = Task.from_json(s.dataset_task_json("kunden"))
    assert task.features == ("alter", "umsatz", "stadt") and task.categorical == ("stadt",)
    assert any("code (numbers mixed with text)" in n for n in rep.notes)  # "1.5" beside "2,5": left as written
    feats = {k: json.loads(v) for k, (v, _) in _stored(ws, "kunden", "features_json").items()}
    assert feats["kunden.csv:2"] == [30.0, 900.0, "Köln"]
    assert feats["kunden.csv:3"] == [31.1, 1201.5, "Zürich"]


def test_parquet_text_and_table(ws, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": [t for t, _ in TICKETS[:3]] + ["no label yet", None],
                             "label": [lab for _, lab in TICKETS[:3]] + [None, "billing"],
                             "image": [{"bytes": b"\x89PNG", "path": f"{i}.png"} for i in range(5)]}),  # as HF exports
                   tmp_path / "hf.parquet")
    rep = add_dataset(ws, "text", path=tmp_path / "hf.parquet", progress=False)
    assert rep.added == 4 and rep.skipped == 1 and "hf.parquet:4" in rep.skipped_examples[0]
    assert _stored(ws, "hf")["hf.parquet:3"] == ("no label yet", None)
    n = 12
    pq.write_table(pa.table({"x": [1.5, None, 3.0, 4.25] * 3, "n": list(range(n)), "plan": ["a", "b", "a", None] * 3,
                             "label": ["lo", "lo", "hi", "hi"] * 3}), tmp_path / "t.parquet")
    rep = add_dataset(ws, "tabular", path=tmp_path / "t.parquet", progress=False)
    assert rep.added == n
    feats = {k: json.loads(v) for k, (v, _) in _stored(ws, "t", "features_json").items()}
    assert feats["t.parquet:1"] == [None, 1.0, "b"] and feats["t.parquet:3"] == [4.25, 3.0, None]


def test_excel_first_sheet_blank_rows_and_a_note_naming_the_other_sheets(ws, tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    sh = wb.active
    sh.title = "Labelled"
    sh.append(["text", "label", None])
    for t, lab in TICKETS[:3]:
        sh.append([t, lab])
    sh.append([None, None])
    sh.append([42, "billing"])  # a number in the text column is its text
    wb.create_sheet("Notes").append(["ignore me"])
    wb.save(tmp_path / "book.xlsx")
    rep = add_dataset(ws, "text", path=tmp_path / "book.xlsx", progress=False)
    assert rep.added == 4 and rep.skipped == 0
    assert "book.xlsx: read its first sheet 'Labelled' (of 2: Labelled, Notes); --sheet NAME reads another" \
        in rep.notes
    stored = _stored(ws, "book")
    assert stored["book.xlsx:2"] == (TICKETS[0][0], "hardware") and stored["book.xlsx:6"] == ("42", "billing")


def test_excel_sheet_by_name_and_a_cover_sheet_named_in_the_error(ws, tmp_path):
    """A workbook whose first sheet is a cover page: the error names the other sheets and --sheet reads one."""
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    wb.active.title = "Read me"
    wb.active.append(["Exported 2026-11-27 by the help desk"])
    data = wb.create_sheet("Tickets")
    data.append(["text", "label"])
    for t, lab in TICKETS:
        data.append([t, lab])
    wb.save(tmp_path / "desk.xlsx")
    with pytest.raises(ValueError, match=r"-- read its first sheet 'Read me' \(of 2: Read me, Tickets\); --sheet "
                                         "NAME reads another"):
        add_dataset(ws, "text", path=tmp_path / "desk.xlsx", progress=False)
    for line in ("Please do not edit the ticket sheet", "Contact the help desk team for questions"):
        wb["Read me"].append([line])
    wb.save(tmp_path / "desk.xlsx")
    with pytest.raises(TaskError, match=r"no label values.* -- read its first sheet 'Read me'"):
        add_dataset(ws, "text", path=tmp_path / "desk.xlsx", progress=False)
    with pytest.raises(ValueError, match=r"no sheet 'tickets'; its sheets: Read me, Tickets"):
        add_dataset(ws, "text", path=tmp_path / "desk.xlsx", sheet="tickets", progress=False)
    rep = add_dataset(ws, "text", path=tmp_path / "desk.xlsx", sheet="Tickets", progress=False)
    assert rep.added == len(TICKETS) and not any("sheet" in n for n in rep.notes)
    with pytest.raises(ValueError, match=r"--sheet is for Excel workbooks \(.xlsx\); a .csv file has no sheets"):
        (tmp_path / "t.csv").write_text("text,label\na,b\n")
        add_dataset(ws, "text", path=tmp_path / "t.csv", sheet="x", progress=False)


@pytest.mark.parametrize("name,content,message", [
    ("bad.parquet", b"PAR1 not really", "not a readable Parquet file"),
    ("bad.xlsx", b"PK\x03\x04 not a zip", "not a readable .xlsx workbook"),
    ("old.xls", b"\xd0\xcf\x11\xe0", r"the old Excel format \(.xls\) is not read; save it as .xlsx or CSV"),
])
def test_unreadable_workbooks_and_parquet_say_so(ws, tmp_path, name, content, message):
    pytest.importorskip("pyarrow")
    pytest.importorskip("openpyxl")
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        add_dataset(ws, "text", path=tmp_path / name, progress=False)


def test_predict_reads_a_semicolon_csv_and_a_parquet_file_as_their_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    task = Task(name="t", modality="tabular", labels=("lo", "hi"), features=("x", "plan"), categorical=("plan",))
    (tmp_path / "new.csv").write_text("plan;x\npro;3,5\nbasic;\n", encoding="utf-8")
    pq.write_table(pa.table({"x": [3.5, None], "plan": ["pro", "basic"]}), tmp_path / "new.parquet")
    csv_rows = expand_tables([tmp_path / "new.csv"], task)
    pq_rows = expand_tables([tmp_path / "new.parquet"], task)
    assert all(isinstance(r, RowInput) and r.error is None for r in csv_rows + pq_rows)
    assert [r.content for r in csv_rows] == [[3.5, "pro"], [None, "basic"]]
    assert [r.content_hash for r in csv_rows] == [r.content_hash for r in pq_rows]  # one row, one cached answer


def test_read_table_pipe_separated_and_one_column(tmp_path):
    (tmp_path / "p.csv").write_text("text|label\na, b; c|x\nd|y\n", encoding="utf-8")
    t = read_table(tmp_path / "p.csv")
    assert t.columns == ["text", "label"] and t.rows[0].values == {"text": "a, b; c", "label": "x"}
    assert t.notes == ["p.csv: read as pipe-separated"]
    (tmp_path / "one.csv").write_text("text\nhello\nworld\n", encoding="utf-8")
    t = read_table(tmp_path / "one.csv")
    assert t.columns == ["text"] and [r.values for r in t.rows] == [{"text": "hello"}, {"text": "world"}]
    assert t.notes == []


def test_missing_optional_reader_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ValueError, match=r"reading Parquet needs pyarrow: pip install 'llm-flywheel\[files\]'"):
        read_table(tmp_path / "x.parquet")


def test_the_python_api_says_how_it_read_a_file_and_warns_about_skipped_rows(tmp_path, capsys):
    """A notebook user used to get a Dataset and nothing else: not the guessed delimiter, not the rows lost."""
    from llm_flywheel import FlywheelWarning, Workspace

    p = tmp_path / "tickets.csv"
    p.write_text(_csv([("text", "label"), *TICKETS], ";") + "too;many;fields\n", encoding="utf-8")
    ws = Workspace(tmp_path / "ws")
    with pytest.warns(FlywheelWarning, match=r"1 unreadable rows or files were skipped \(first: tickets.csv:26: "
                                             r"3 fields, header has 2\)"):
        ds = ws.add_dataset("text", p)
    err = capsys.readouterr().err
    assert "note: tickets: 24 added, 0 already present" in err
    assert "note: tickets.csv: read as semicolon-separated" in err
    assert ds.last_import.added == 24 and ds.last_import.skipped == 1
    with pytest.warns(FlywheelWarning):  # the bad row is still in the file
        ws.add_dataset("text", p, progress=False)  # otherwise silent: no note printed
    assert "note:" not in capsys.readouterr().err


def test_predict_reads_each_input_file_only_when_its_turn_comes(tmp_path, monkeypatch):
    """240 phone photos were all read before the first answer (800 MB held); now at most ``concurrency`` inputs
    are read ahead of their answers, off the event loop."""
    import asyncio
    import threading

    import llm_flywheel.pipeline.predict_files as pf

    files = []
    for i in range(12):
        files.append(tmp_path / f"{i}.txt")
        files[-1].write_text(f"ticket {i}")
    reads, answered, ahead, threads = [], [], [], set()
    real = pf.read_input

    def spy(path, task):
        threads.add(threading.current_thread().name)
        reads.append(path)
        return real(path, task)

    class Cascade:  # what answer_inputs needs of a cascade: its task, an answer per input, a close
        task = Task(name="t", modality="text", labels=("a", "b"))

        async def apredict_raw(self, content, **kw):
            ahead.append(len(reads) - len(answered))
            await asyncio.sleep(0.01)
            answered.append(content)
            return content

        async def aclose(self):
            pass

    monkeypatch.setattr(pf, "read_input", spy)
    got = asyncio.run(pf.answer_inputs(Cascade(), files, log=False, concurrency=3))
    assert got == [f"ticket {i}" for i in range(12)]
    assert max(ahead) <= 3 and threading.main_thread().name not in threads
